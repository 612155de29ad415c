// ReLU: y = max(x, 0); dy/dx = 1 where y > 0, else 0 (the subgradient 0 at x = 0, as
// PyTorch). The backward reads the output, so the input need not be kept.
#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

void CpuBackend::relu_forward(int64_t n, const float* x, float* y) {
  parallel_for(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
  });
}

void CpuBackend::relu_backward(int64_t n, const float* y, const float* dy, float* dx) {
  parallel_for(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
  });
}

}  // namespace polyak
