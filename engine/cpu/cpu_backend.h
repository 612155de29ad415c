// The CPU: memory from one host arena, and the fast CPU kernel table.
//
// The table (cpu_kernels.cpp) is the reference table with the kernels this directory
// makes faster put in its place: our own SGEMM (engine/cpu/sgemm.h, AVX-512 or AVX2
// chosen at run time) for matrix products and convolutions, OpenMP loops across the
// cores for the rest, and every fusion of POLYAK_FUSED_KERNELS. Each family of kernels
// is defined in its own file here, named as in engine/kernels.h.
#pragma once

#include "engine/backend.h"
#include "engine/cpu/host_arena.h"

namespace polyak {

namespace cpu {
// The fast kernels: declared for every entry of the list; cpu_kernels.cpp names the
// ones this directory defines.
POLYAK_KERNELS(POLYAK_DECLARE_KERNEL)
POLYAK_FUSED_KERNELS(POLYAK_DECLARE_KERNEL)
const Kernels& fast_kernels();
}  // namespace cpu

class CpuBackend final : public Backend {
 public:
  CpuBackend();
  Device device() const override { return Device::CPU; }
  const Kernels& native_kernels() const override { return cpu::fast_kernels(); }

  // memory.cpp
  void* allocate(size_t bytes) override;
  void deallocate(void* ptr, size_t bytes) override;
  void copy_from_host(void* dst, const void* host_src, size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void set_zero(void* dst, size_t bytes) override;
  void synchronize() override {}
  const HostArena& arena() const { return arena_; }

 private:
  HostArena arena_;
};

CpuBackend& cpu_backend();

}  // namespace polyak
