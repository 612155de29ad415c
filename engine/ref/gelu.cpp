// GELU (Hendrycks & Gimpel 2016), the exact form PyTorch's nn.GELU() computes:
//
//   gelu(x) = x * Phi(x),   Phi(x) = (1 + erf(x / sqrt(2))) / 2,
//
// Phi the standard normal's distribution function: x is kept in proportion to how likely
// a standard normal is to fall below it. Its derivative, by the product rule, with
// phi(x) = exp(-x^2 / 2) / sqrt(2 pi) the normal's density (Phi' = phi):
//
//   gelu'(x) = Phi(x) + x * phi(x),   dx = dy * gelu'(x).
//
// The backward reads the input x (unlike ReLU's, the output does not determine it).
// Phi is computed as erfc(-x / sqrt 2) / 2, the same function: written with erf, 1 + erf
// cancels for x below about -5 and keeps no correct digit of Phi's tiny values.
#include <cmath>

#include "engine/ref/kernels.h"

namespace polyak::ref {

namespace {
double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }
double normal_pdf(double x) { return std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI); }
}  // namespace

void gelu_forward(int64_t n, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(x[i] * normal_cdf(x[i]));
}

void gelu_backward(int64_t n, const float* x, const float* dy, float* dx) {
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    dx[i] = static_cast<float>(dy[i] * (normal_cdf(v) + v * normal_pdf(v)));
  }
}

}  // namespace polyak::ref
