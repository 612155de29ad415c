// GELU on the CPU's cores: the reference's formulas (engine/ref/gelu.cpp) in float,
// with erfc and exp computed by branch-free polynomials that the compiler turns into
// AVX-512 code (libm's erff and expf are scalar calls, and took a sixth of airbench94's
// training step). The table-driven test (check_gelu) holds the results to the
// reference's double computation.
//
// Phi(x) = erfc(-x / sqrt 2) / 2 through erfc of z = |x| / sqrt 2 >= 0 (Numerical
// Recipes' erfcc, a Chebyshev fit with relative error below 1.2e-7 for every z):
//   erfc(z) = t exp(-z^2 + P(t)),  t = 1 / (1 + z / 2),  P a polynomial of degree 9,
// then Phi(x) = erfc(z) / 2 for x < 0 (relative accuracy where Phi is tiny) and
// 1 - erfc(z) / 2 for x >= 0. The backward's density is phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
#include <bit>
#include <cmath>
#include <cstdint>

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;    // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1 / sqrt(2 pi)

// exp(x) for x <= 88: x = n ln 2 + r with |r| <= ln 2 / 2, exp(r) by its Taylor
// polynomial to degree 6 (relative error below 2e-7 there), 2^n written into the
// float's exponent bits. Below -87 the result is 0 (the end of float's normal range).
inline float exp_float(float x) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693145751953125f, kLn2Lo = 1.42860682030941723e-6f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float clamped = x < -87.0f ? -87.0f : x;   // (a NaN stays NaN)
  const float n = (clamped * kLog2e + kRound) - kRound;
  const float r = (clamped - n * kLn2Hi) - n * kLn2Lo;  // ln 2 in two parts: r is exact to float
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float whole = n == n ? n : 0.0f;  // a NaN x gives NaN through p; its n must not reach the cast
  const float scale = std::bit_cast<float>((static_cast<int32_t>(whole) + 127) << 23);
  return clamped <= -87.0f ? 0.0f : p * scale;
}

// Phi(x), as above.
inline float normal_cdf(float x) {
  const float z = std::fabs(x) * kInvSqrt2, t = 1.0f / (1.0f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  const float erfc = t * exp_float(p - z * z);
  return x < 0.0f ? 0.5f * erfc : 1.0f - 0.5f * erfc;
}

}  // namespace

void cpu::gelu_forward(int64_t n, const float* x, float* y) {
  parallel_for(n, 1, [x, y](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) y[i] = x[i] * normal_cdf(x[i]);
  });
}

void cpu::gelu_backward(int64_t n, const float* x, const float* dy, float* dx) {
  parallel_for(n, 1, [x, dy, dx](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      const float v = x[i];
      dx[i] = dy[i] * (normal_cdf(v) + v * kInvSqrt2Pi * exp_float(-0.5f * v * v));
    }
  });
}

}  // namespace polyak
