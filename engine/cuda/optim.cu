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

}  // namespace

void CudaBackend::sgd_step(const SgdHyper& h, int64_t n, float* param, const float* grad, float* momentum_buffer) {
  if (n <= 0) return;
  sgd_kernel<<<grid_for(n), kThreads, 0, stream_>>>(h, n, param, grad, momentum_buffer);
  POLYAK_CUDA_LAUNCHED();
}

}  // namespace polyak
