// The optimiser and averaging updates on the GPU as single fused passes over the flat
// arenas (the CPU file: engine/cpu/optim.cpp).
//
// SGD (torch.optim.SGD): d = g + wd p; b = d on the first step, else
// b = momentum b + (1 - dampening) d; d = d + momentum b (Nesterov) or d = b; p -= lr d.
// EMA: for each of the K averages, e_k = a_k e_k + (1 - a_k) w, reading w once.
#include "engine/cuda/common.cuh"

namespace polyak {

using namespace cuda_detail;

namespace {

__global__ void sgd_kernel(SgdHyper h, int64_t n, float* param, const float* grad, float* buf) {
  POLYAK_GRID_LOOP(i, n) {
    const float p = param[i];
    float d = grad[i] + h.weight_decay * p;
    if (h.momentum != 0.0f) {
      const float b = h.first_step ? d : h.momentum * buf[i] + (1.0f - h.dampening) * d;
      buf[i] = b;
      d = h.nesterov ? d + h.momentum * b : b;
    }
    param[i] = p - h.lr * d;
  }
}

__global__ void ema_kernel(EmaUpdate u, int64_t n, const float* live) {
  POLYAK_GRID_LOOP(i, n) {
    const float w = live[i];
#pragma unroll
    for (int k = 0; k < kMaxAverages; ++k) {
      if (k < u.count) u.average[k][i] = u.decay[k] * u.average[k][i] + (1.0f - u.decay[k]) * w;
    }
  }
}

}  // namespace

void CudaBackend::sgd_step(const SgdHyper& h, int64_t n, float* param, const float* grad, float* momentum_buffer) {
  if (n <= 0) return;
  sgd_kernel<<<grid_for(n), kThreads, 0, stream_>>>(h, n, param, grad, momentum_buffer);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::ema_update(const EmaUpdate& u, int64_t n, const float* live) {
  if (n <= 0 || u.count <= 0) return;
  if (u.count > kMaxAverages)
    throw std::invalid_argument("ema_update: at most " + std::to_string(kMaxAverages) + " averages, got " +
                                std::to_string(u.count));
  ema_kernel<<<grid_for(n), kThreads, 0, stream_>>>(u, n, live);
  POLYAK_CUDA_LAUNCHED();
}

}  // namespace polyak
