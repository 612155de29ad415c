// The CUDA table: the kernels engine/cuda defines, each entry a thunk that calls the
// member function of the one CudaBackend (which owns the stream, the library handles and
// the allocator the kernels use). Entries not named here stay null: the plain conv2d and
// batchnorm kernels (the ops call the fused ones, which this table has), the fusions
// cuDNN does not offer (plane moments, summing and in-place data gradients), and any op
// that has not been written for the GPU yet, which then runs its reference on the host
// (reported once; refused under POLYAK_STRICT_KERNELS=1).
#include "engine/cuda/cuda_backend.h"

namespace polyak {

namespace {

// Thunk<F>::call<&CudaBackend::name> has the kernel's own signature F and forwards to
// the member of the same name: a plain function pointer for the table.
template <class F>
struct Thunk;
template <class R, class... Args>
struct Thunk<R(Args...)> {
  template <R (CudaBackend::*member)(Args...)>
  static R call(Args... args) {
    return (the_cuda_backend().*member)(args...);
  }
};

Kernels make_cuda_kernels() {
  Kernels k;
#define POLYAK_CUDA_KERNEL(name) k.name = &Thunk<Kernels::name##_kernel>::call<&CudaBackend::name>;
  // elementwise.cu, reduce.cu, relu.cu, gelu.cu, gemm.cpp
  POLYAK_CUDA_KERNEL(fill)
  POLYAK_CUDA_KERNEL(copy_strided)
  POLYAK_CUDA_KERNEL(binary)
  POLYAK_CUDA_KERNEL(scalar)
  POLYAK_CUDA_KERNEL(unary)
  POLYAK_CUDA_KERNEL(axpy)
  POLYAK_CUDA_KERNEL(multi_lerp)
  POLYAK_CUDA_KERNEL(increment_counter)
  POLYAK_CUDA_KERNEL(reduce_sum)
  POLYAK_CUDA_KERNEL(relu_forward)
  POLYAK_CUDA_KERNEL(relu_backward)
  POLYAK_CUDA_KERNEL(gelu_forward)
  POLYAK_CUDA_KERNEL(gelu_backward)
  POLYAK_CUDA_KERNEL(gemm)
  // conv2d.cu (cuDNN), batchnorm.cu
  POLYAK_CUDA_KERNEL(conv2d_forward_epilogue)
  POLYAK_CUDA_KERNEL(conv2d_backward_data)
  POLYAK_CUDA_KERNEL(conv2d_backward_filter)
  POLYAK_CUDA_KERNEL(batchnorm_forward_train_fused)
  POLYAK_CUDA_KERNEL(batchnorm_forward_eval_fused)
  POLYAK_CUDA_KERNEL(batchnorm_backward_fused)
  // pool.cu, loss.cu, optim.cu, dropout.cu
  POLYAK_CUDA_KERNEL(max_pool2d_forward)
  POLYAK_CUDA_KERNEL(max_pool2d_backward)
  POLYAK_CUDA_KERNEL(avg_pool2d_forward)
  POLYAK_CUDA_KERNEL(avg_pool2d_backward)
  POLYAK_CUDA_KERNEL(log_softmax_forward)
  POLYAK_CUDA_KERNEL(log_softmax_backward)
  POLYAK_CUDA_KERNEL(cross_entropy_forward)
  POLYAK_CUDA_KERNEL(cross_entropy_backward)
  POLYAK_CUDA_KERNEL(sgd_step)
  POLYAK_CUDA_KERNEL(dropout_forward)
  POLYAK_CUDA_KERNEL(dropout_backward)
#undef POLYAK_CUDA_KERNEL
  return k;
}

}  // namespace

const Kernels& CudaBackend::native_kernels() const {
  static const Kernels table = make_cuda_kernels();
  return table;
}

}  // namespace polyak
