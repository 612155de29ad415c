// The SGD update as one pass over the flat arenas: each element of the parameter,
// gradient and momentum arenas is read and written once.
#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

void CpuBackend::sgd_step(const SgdHyper& h, int64_t n, float* param, const float* grad, float* buf) {
  parallel_for(n, 4, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float d = grad[i] + h.weight_decay * param[i];
      if (h.momentum != 0.0f) {
        buf[i] = h.first_step ? d : h.momentum * buf[i] + (1.0f - h.dampening) * d;
        d = h.nesterov ? d + h.momentum * buf[i] : buf[i];
      }
      param[i] -= h.lr * d;
    }
  });
}

}  // namespace polyak
