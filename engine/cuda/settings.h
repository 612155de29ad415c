// Switches and facts of the CUDA backend that apps and tests may use in any build.
//
// Everything here is plain C++ (no CUDA headers) and is defined in every build: by the
// CUDA table (engine/cuda/device.cpp) when it is compiled in, else by
// engine/cuda_absent.cpp, where the setters do nothing and the queries report no GPU.
// So `--deterministic` or `--tf32` can be wired into an app without an #ifdef.
#pragma once

#include <cstddef>
#include <string>

namespace polyak {

// True when this build has the CUDA table and a GPU is present (creates the backend).
bool cuda_present();
// Why cuda_present() is false ("" when it is true), e.g. "built without CUDA" or the
// CUDA runtime's answer to cudaGetDeviceCount.
std::string cuda_unavailable_reason();
// "NVIDIA H200 (sm_90, 132 SMs, 140 GiB)", or "" without a GPU.
std::string cuda_device_description();

// The GPU the backend uses, by CUDA's index (default 0): a data-parallel job runs one
// rank per GPU, each on the GPU of its index among the ranks of its machine. Call
// before anything touches the GPU; later calls have no effect.
void set_cuda_device_index(int index);

// TF32 tensor-core math for cuBLAS products and cuDNN convolutions: about 8x the FP32
// throughput with a 10-bit mantissa in the products. Off by default (exact FP32, as the
// CPU); it is a global choice, read at every call.
void set_cuda_tf32(bool on);
bool cuda_tf32();

// Restricts cuDNN to algorithms that give bit-identical results run after run, chosen
// by cuDNN's heuristic instead of by timing (so two runs choose alike). Our own kernels
// are deterministic in any mode: they reduce in a fixed order, without atomics; cuBLAS
// is on one stream. Off by default (the fastest algorithms are chosen by timing).
void set_cuda_deterministic(bool on);
bool cuda_deterministic();

// For tests: skip cuDNN and compute every convolution with the im2col + cuBLAS path
// that is otherwise used only when cuDNN offers no algorithm for a shape.
void set_cuda_conv_force_fallback(bool on);

// Device memory held by the caching allocator, in bytes: `in_use` by live tensors and
// scratch buffers, `reserved` in use plus cached for reuse (what cudaMalloc returned).
struct CudaMemoryStats {
  size_t in_use = 0;
  size_t peak_in_use = 0;
  size_t reserved = 0;
  size_t peak_reserved = 0;
  size_t device_mallocs = 0;  // cudaMalloc calls so far (flat in a steady training loop)
};
CudaMemoryStats cuda_memory_stats();
void cuda_reset_peak_memory();

}  // namespace polyak
