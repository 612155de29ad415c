// GELU on the CPU's cores: the reference's formulas (engine/ref/gelu.cpp) in float, the
// elements spread over the OpenMP team. float's erf and exp keep the result within a
// few units in the last place of the reference's double computation, which the
// table-driven test (check_gelu) holds it to.
#include <cmath>

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

namespace {
constexpr float kInvSqrt2 = 0.70710678118654752f;    // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1 / sqrt(2 pi)
}  // namespace

void cpu::gelu_forward(int64_t n, const float* x, float* y) {
  parallel_for(n, 1, [x, y](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * kInvSqrt2));
  });
}

void cpu::gelu_backward(int64_t n, const float* x, const float* dy, float* dx) {
  parallel_for(n, 1, [x, dy, dx](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float v = x[i];
      const float cdf = 0.5f * (1.0f + std::erf(v * kInvSqrt2));
      dx[i] = dy[i] * (cdf + v * kInvSqrt2Pi * std::exp(-0.5f * v * v));
    }
  });
}

}  // namespace polyak
