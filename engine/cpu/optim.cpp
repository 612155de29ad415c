// The optimiser and averaging updates as single passes over the flat arenas: each
// element of the parameter, gradient and momentum arenas is read and written once, and
// the K moving averages read each live weight once.
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

void CpuBackend::ema_update(const EmaUpdate& u, int64_t n, const float* live) {
  parallel_for(n, 2 * u.count, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float w = live[i];
      for (int k = 0; k < u.count; ++k) u.average[k][i] = u.decay[k] * u.average[k][i] + (1.0f - u.decay[k]) * w;
    }
  });
}

}  // namespace polyak
