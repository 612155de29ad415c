// Reference SGD step, torch.optim.SGD's semantics, element by element:
//   d = grad + weight_decay * param
//   v = d on the first step, else momentum * v + (1 - dampening) * d   (v: the buffer)
//   param -= lr * (nesterov ? d + momentum * v : v)
// Without momentum there is no buffer: param -= lr * d.
#include "engine/ref/kernels.h"

namespace polyak::ref {

void sgd_step(const SgdHyper& h, int64_t n, float* param, const float* grad, float* momentum_buffer) {
  for (int64_t i = 0; i < n; ++i) {
    const float d = grad[i] + h.weight_decay * param[i];
    if (h.momentum == 0.0f) {
      param[i] -= h.lr * d;
      continue;
    }
    const float v = h.first_step ? d : h.momentum * momentum_buffer[i] + (1.0f - h.dampening) * d;
    momentum_buffer[i] = v;
    param[i] -= h.lr * (h.nesterov ? d + h.momentum * v : v);
  }
}

}  // namespace polyak::ref
