// ReLU: y = max(x, 0); dy/dx = 1 where y > 0, else 0 (the subgradient 0 at x = 0, as
// PyTorch). The backward reads the output, so the input need not be kept.
//
// The loops read their pointers from locals, not from the lambda's captures by
// reference: a store through dx could otherwise change dy for all the compiler knows,
// which forces a reload per element and keeps the loop scalar and branchy.
#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

void cpu::relu_forward(int64_t n, const float* x, float* y) {
  parallel_for(n, 1, [x, y](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
  });
}

void cpu::relu_backward(int64_t n, const float* y, const float* dy, float* dx) {
  parallel_for(n, 1, [y, dy, dx](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
  });
}

}  // namespace polyak
