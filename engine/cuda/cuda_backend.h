// The CUDA backend: cuBLAS for matrix products, cuDNN for convolutions, our own kernels
// for everything else. Each family lives in its own file here, named as in
// engine/kernels.h and engine/ref/, and computes what the reference of the same name
// computes (tests/engine/test_kernels.cpp compares them); cuda_kernels.cpp makes the
// table. Files without kernels are .cpp (compiled by the host compiler, faster than
// nvcc): device.cpp (life cycle, settings, errors), memory.cpp, gemm.cpp.
//
// Synchronisation story. Everything runs in order on ONE non-blocking stream, owned by
// this backend: our kernels, cuBLAS and cuDNN (both bound to it), device-to-device
// copies and memsets, and the host-device copies. So no call needs an event or a wait
// to see the results of an earlier call, and the host returns as soon as work is queued.
//   - copy_from_host copies the host bytes into a pinned staging slot and queues an
//     async DMA from it; it returns before the DMA runs, so the host buffer may be
//     reused at once, and the CPU goes on (e.g. preparing batch n+1) while the GPU
//     still computes batch n. A slot is reused only after the event recorded behind its
//     DMA has fired.
//   - copy_to_host queues the DMA into a pinned slot and WAITS for it (and so for all
//     work queued before it), then copies to the caller's buffer: every read of device
//     data by the host (Tensor::item, to_vector, to(CPU)) is a synchronisation point.
//   - cross_entropy_forward also waits (it reads the label-check flag back).
//   - synchronize() waits for everything queued.
//   - Freed memory returns to the allocator's cache at once, while kernels that use it
//     may still be queued: this is safe because a later user of the block is queued on
//     the same stream, behind them (the rule PyTorch's caching allocator relies on).
// The device is device 0 (CUDA_VISIBLE_DEVICES picks which GPU that is); every host
// thread sees device 0 as current by default, so a loader thread may call
// copy_from_host too (the staging ring and the allocator are locked).
//
// Memory: a caching allocator with size classes (memory.cpp). cudaMalloc only when the
// free list of a class is empty; blocks are never returned to the driver in a steady
// state (cudaFree only when cudaMalloc fails, after which the call is retried once).
// Never managed memory.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/backend.h"
#include "engine/cuda/settings.h"

// The library handles, declared as cublas_v2.h and cudnn.h declare them, so that the
// kernel files need not parse those headers (engine/cuda/libraries.h includes them).
typedef struct cublasContext* cublasHandle_t;
typedef struct cudnnContext* cudnnHandle_t;

namespace polyak {

// Throw std::runtime_error naming the call, the file and the line on a failure.
void cuda_check(cudaError_t status, const char* what, const char* file, int line);
#define POLYAK_CUDA(call) ::polyak::cuda_check((call), #call, __FILE__, __LINE__)
// After a kernel launch: reports a bad launch configuration at once (a fault inside
// the kernel surfaces at the next synchronising call).
#define POLYAK_CUDA_LAUNCHED() ::polyak::cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

class CudaBackend final : public Backend {
 public:
  CudaBackend();  // on the device of set_cuda_device_index (0 by default)
  ~CudaBackend() override;
  Device device() const override { return Device::CUDA; }
  const Kernels& native_kernels() const override;

  // memory.cpp
  void* allocate(size_t bytes) override;
  void deallocate(void* ptr, size_t bytes) override;
  void copy_from_host(void* dst, const void* host_src, size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void set_zero(void* dst, size_t bytes) override;
  void synchronize() override;
  // Like allocate, but nullptr instead of an exception when the device is full.
  void* try_allocate(size_t bytes);
  // Frees the blocks the allocator keeps for reuse (waits for the stream first).
  void release_cached();
  CudaMemoryStats memory_stats() const;
  void reset_peak_memory();

  // The kernels, one member function per entry of engine/kernels.h's lists, each family
  // defined in its own file here (elementwise.cu, reduce.cu, gemm.cpp, relu.cu,
  // conv2d.cu, batchnorm.cu, pool.cu, loss.cu, optim.cu, dropout.cu). The table
  // (device.cpp: cuda_kernels) names the ones defined; the others stay null, and an op
  // that needs one runs its reference on the host (engine/ops/op_helpers.h).
  POLYAK_KERNELS(POLYAK_DECLARE_KERNEL)
  POLYAK_FUSED_KERNELS(POLYAK_DECLARE_KERNEL)
  // `batch` row-major products C_i = alpha op(A_i) op(B_i) + beta C_i, with A_i = A + i * stride_a
  // (and so on); a stride of 0 reuses one matrix for every product.
  void gemm_strided_batched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                            const float* A, int64_t lda, int64_t stride_a, const float* B, int64_t ldb,
                            int64_t stride_b, float beta, float* C, int64_t ldc, int64_t stride_c, int64_t batch);

  // ---- for the kernel files ----
  cudaStream_t stream() const { return stream_; }
  int sm_count() const { return sm_count_; }
  const std::string& description() const { return description_; }
  cublasHandle_t cublas();  // created on first use, bound to stream()
  cudnnHandle_t cudnn();    // created on first use, bound to stream()

  // Device scratch memory for the duration of one call, from the caching allocator.
  class Scratch {
   public:
    Scratch(CudaBackend& owner, size_t bytes)
        : owner_(owner), bytes_(bytes), ptr_(bytes ? owner.allocate(bytes) : nullptr) {}
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    ~Scratch() { owner_.deallocate(ptr_, bytes_); }
    template <class T> T* as() const { return static_cast<T*>(ptr_); }
    size_t bytes() const { return bytes_; }

   private:
    CudaBackend& owner_;
    size_t bytes_;
    void* ptr_;
  };

 private:
  // memory.cpp: the allocator's free lists, keyed by size class.
  mutable std::mutex memory_mutex_;
  std::unordered_map<size_t, std::vector<void*>> free_blocks_;
  CudaMemoryStats stats_;
  void release_cached_locked();

  // memory.cpp: pinned staging ring for host-device copies.
  struct StagingSlot {
    void* host = nullptr;
    cudaEvent_t done = nullptr;
    bool pending = false;
  };
  std::mutex staging_mutex_;
  std::vector<StagingSlot> staging_;
  size_t next_slot_ = 0;
  StagingSlot& next_staging_slot();  // waits until the slot's last copy is done

  // loss.cu: where kernels record the first bad label row (device) and its host mirror.
  unsigned long long* label_error_ = nullptr;
  unsigned long long* label_error_host_ = nullptr;
  void check_labels_after(const int64_t* labels, int64_t cols);

  // conv2d.cu: per-geometry cuDNN descriptors and chosen algorithms.
  struct ConvPlan;
  std::mutex conv_mutex_;
  std::map<std::vector<int64_t>, ConvPlan*> conv_plans_;
  ConvPlan& conv_plan(const Conv2dGeom& g);
  static void destroy_conv_plan(ConvPlan* plan);
  void conv2d_fallback_forward(const Conv2dGeom& g, const float* x, const float* w, float* y);
  void conv2d_fallback_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx);
  void conv2d_fallback_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw);

  int sm_count_ = 0;
  std::string description_;
  cudaStream_t stream_ = nullptr;
  std::once_flag cublas_once_, cudnn_once_;
  cublasHandle_t cublas_ = nullptr;
  cudnnHandle_t cudnn_ = nullptr;
  void* cublas_workspace_ = nullptr;
  size_t cublas_workspace_bytes_ = 0;
};

// The one instance (never destroyed: tensors may be freed during static destruction).
// Valid only where cuda_backend() returned non-null.
CudaBackend& the_cuda_backend();

}  // namespace polyak
