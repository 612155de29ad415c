// The optimiser and averaging updates as single passes over the flat arenas: each
// element of the parameter, gradient and momentum arenas is read and written once, and
// the K moving averages read each live weight once.
#include <algorithm>

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

// Both loops take their pointers and hyperparameters as local copies, __restrict where
// the arenas are distinct: read through the lambda's captures, every store could change
// them for all the compiler knows, and the loops would stay scalar.
void cpu::sgd_step(const SgdHyper& h, int64_t n, float* param, const float* grad, float* buf) {
  parallel_for(n, 4, [h, param, grad, buf](int64_t begin, int64_t end) {
    float* __restrict p = param;
    const float* __restrict g = grad;
    float* __restrict m = buf;
    const float lr = h.lr, mu = h.momentum, kept = 1.0f - h.dampening, wd = h.weight_decay;
    if (mu == 0.0f) {
      for (int64_t i = begin; i < end; ++i) p[i] -= lr * (g[i] + wd * p[i]);
      return;
    }
    for (int64_t i = begin; i < end; ++i) {
      const float d = g[i] + wd * p[i];
      const float v = h.first_step ? d : mu * m[i] + kept * d;
      m[i] = v;
      p[i] -= lr * (h.nesterov ? d + mu * v : v);
    }
  });
}

}  // namespace polyak
