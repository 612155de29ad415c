// GELU on the GPU (the reference: engine/ref/gelu.cpp): y = x Phi(x) with Phi the
// standard normal's distribution function, dx = dy (Phi(x) + x phi(x)), in float with
// CUDA's erff and expf.
#include "engine/cuda/common.cuh"

namespace polyak {

using namespace cuda_detail;

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;    // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1 / sqrt(2 pi)

__global__ void gelu_forward_kernel(int64_t n, const float* x, float* y) {
  POLYAK_GRID_LOOP(i, n) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + erff(v * kInvSqrt2));
  }
}

__global__ void gelu_backward_kernel(int64_t n, const float* x, const float* dy, float* dx) {
  POLYAK_GRID_LOOP(i, n) {
    const float v = x[i];
    const float cdf = 0.5f * (1.0f + erff(v * kInvSqrt2));
    dx[i] = dy[i] * (cdf + v * kInvSqrt2Pi * expf(-0.5f * v * v));
  }
}

}  // namespace

void CudaBackend::gelu_forward(int64_t n, const float* x, float* y) {
  if (n <= 0) return;
  gelu_forward_kernel<<<grid_for(n), kThreads, 0, stream_>>>(n, x, y);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::gelu_backward(int64_t n, const float* x, const float* dy, float* dx) {
  if (n <= 0) return;
  gelu_backward_kernel<<<grid_for(n), kThreads, 0, stream_>>>(n, x, dy, dx);
  POLYAK_CUDA_LAUNCHED();
}

}  // namespace polyak
