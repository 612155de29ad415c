// ReLU on the GPU (the CPU file: engine/cpu/relu.cpp): y = max(x, 0); the backward
// reads the output, dx = dy where y > 0, else 0 (the subgradient 0 at x = 0).
#include "engine/cuda/common.cuh"

namespace polyak {

using namespace cuda_detail;

namespace {

__global__ void relu_forward_kernel(int64_t n, const float* x, float* y) {
  POLYAK_GRID_LOOP(i, n) {
    const float v = x[i];
    y[i] = v > 0.0f ? v : 0.0f;
  }
}

__global__ void relu_backward_kernel(int64_t n, const float* y, const float* dy, float* dx) {
  POLYAK_GRID_LOOP(i, n) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

}  // namespace

void CudaBackend::relu_forward(int64_t n, const float* x, float* y) {
  if (n <= 0) return;
  relu_forward_kernel<<<grid_for(n), kThreads, 0, stream_>>>(n, x, y);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::relu_backward(int64_t n, const float* y, const float* dy, float* dx) {
  if (n <= 0) return;
  relu_backward_kernel<<<grid_for(n), kThreads, 0, stream_>>>(n, y, dy, dx);
  POLYAK_CUDA_LAUNCHED();
}

}  // namespace polyak
