// The dot-product kernels of sgemm's vector paths: C = alpha * A * B^T + beta * C, both
// operands' rows along k, read in place. Included, like sgemm_blocked.h (whose
// conventions they follow), by sgemm_avx512.cpp and sgemm_avx2.cpp with
// POLYAK_SGEMM_TARGET defined (x86-64 only).
//
// With op(A) = A and op(B) = B^T, every element of C is the dot product of a row of A
// and a row of B, both contiguous. The blocked method (sgemm_blocked.h) would first
// transpose B into panels, a full pass over it; when the sum is long, reading both rows
// in place is cheaper: an RA x RB tile of C is kept as RA * RB vector accumulators,
// each summing L products per step of k, and the L lanes of each are added up once at
// the end. A convolution's filter gradient is such a product, its B the column matrix
// (one row of P*Q pixels per filter tap), which is where the transposes cost most.
#pragma once

#include <algorithm>
#include <cstdint>

#include "engine/cpu/sgemm_paths.h"

#ifdef POLYAK_SGEMM_TARGET
#include <immintrin.h>

namespace polyak::cpu::detail {
namespace {

#define POLYAK_SGEMM_INLINE POLYAK_SGEMM_TARGET inline __attribute__((always_inline))

// Whether the dot-product kernels beat packing for op(A) op(B), M x N with sums of K
// terms. The lanes' final sums (a few operations per element of C) must be small
// against the K / L fused multiply-adds of each element, and the transposed panels of
// B that packing would make must serve few rows of A (M / MR tiles each): long sums
// over few rows (measurements: docs/PERFORMANCE.md, "SGEMM: dot products for filter gradients").
inline bool dot_products_pay(bool trans_a, bool trans_b, int64_t M, int64_t K) {
  return !trans_a && trans_b && K >= 512 && M <= 32;
}

// The lane sums of four vectors of 8: {sum a, sum b, sum c, sum d}.
POLYAK_SGEMM_INLINE __m128 sum_lanes4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);      // a01 a23 b01 b23 | a45 a67 b45 b67
  const __m256 cd = _mm256_hadd_ps(c, d);      // c01 c23 d01 d23 | c45 c67 d45 d67
  const __m256 abcd = _mm256_hadd_ps(ab, cd);  // a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// acc[i][j] += a[i][k .. k + lanes) * b[j][k .. k + lanes), lane by lane.
template <class T, int RA, int RB>
POLYAK_SGEMM_INLINE void dot_step(typename T::V (&acc)[RA][RB], const float* const* a, const float* const* b, int64_t k,
                                  int lanes) {
  using V = typename T::V;
  V av[RA], bv[RB];
#pragma GCC unroll 8
  for (int i = 0; i < RA; ++i) av[i] = lanes == T::L ? T::load(a[i] + k) : T::load_first(a[i] + k, lanes);
#pragma GCC unroll 8
  for (int j = 0; j < RB; ++j) bv[j] = lanes == T::L ? T::load(b[j] + k) : T::load_first(b[j] + k, lanes);
#pragma GCC unroll 8
  for (int i = 0; i < RA; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < RB; ++j) acc[i][j] = T::fma(av[i], bv[j], acc[i][j]);
}

// One tile: c[i*ldc + j] (i < rows, j < cols) = alpha * dot(a[i], b[j]) + beta * c.
// Rows past the edge of C are given as repeats of the last one: computed, not stored.
template <class T, int RA, int RB>
POLYAK_SGEMM_TARGET void dot_tile(int64_t K, const float* const* a, const float* const* b, float* c, int64_t ldc,
                                  int rows, int cols, float alpha, float beta) {
  typename T::V acc[RA][RB];
#pragma GCC unroll 8
  for (int i = 0; i < RA; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < RB; ++j) acc[i][j] = T::zero();
  int64_t k = 0;
  for (; k + T::L <= K; k += T::L) dot_step<T, RA, RB>(acc, a, b, k, T::L);
  if (k < K) dot_step<T, RA, RB>(acc, a, b, k, static_cast<int>(K - k));
  for (int i = 0; i < rows; ++i) {
    float* out = c + i * ldc;
    int j = 0;
    if constexpr (RB >= 4) {
      // The first four sums of the row together: one transposing reduction for the four
      // instead of one lane sum each, which matters when the sum is short.
      if (cols >= 4) {
        __m128 sums = _mm_mul_ps(_mm_set1_ps(alpha), sum_lanes4(T::halves_added(acc[i][0]), T::halves_added(acc[i][1]),
                                                                T::halves_added(acc[i][2]), T::halves_added(acc[i][3])));
        if (beta != 0.0f) sums = _mm_add_ps(sums, _mm_mul_ps(_mm_set1_ps(beta), _mm_loadu_ps(out)));
        _mm_storeu_ps(out, sums);
        j = 4;
      }
    }
    for (; j < cols; ++j) {
      const float sum = alpha * T::sum_lanes(acc[i][j]);
      out[j] = beta == 0.0f ? sum : sum + beta * out[j];
    }
  }
}

// The bytes spanned by the rows of B: with row offsets (a convolution's shifted rows),
// rows overlap, and the span can be far less than N rows of K.
inline int64_t span_of_rows(const RowMap& B, int64_t N, int64_t K) {
  if (!B.offsets) return ((N - 1) * B.ld + K) * static_cast<int64_t>(sizeof(float));
  const auto [lowest, highest] = std::minmax_element(B.offsets, B.offsets + N);
  return (*highest - *lowest + K) * static_cast<int64_t>(sizeof(float));
}

// The whole product, tile by tile. One operand's tiles run in the outer loop, so that a
// tile of it stays in cache while all of the other operand streams by, once per outer
// tile. The order reads less memory when the operand streamed again and again is the
// one with the smaller span: M * lda against B's rows, weighted by how many times each
// would be re-read (B once per RA rows of A, A once per RB rows of B). For a filter
// gradient, B's N rows are shifted views of one padded image, so B is re-streamed and
// A (the output gradient) is read once, instead of once per RB filter taps.
template <class T, int RA, int RB>
POLYAK_SGEMM_TARGET void sgemm_dot(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                                   const RowMap& B, float beta, float* C, int64_t ldc) {
  const auto tile = [&](int64_t i0, int64_t j0) POLYAK_SGEMM_TARGET {  // lambdas do not inherit the target
    const int rows = static_cast<int>(std::min<int64_t>(RA, M - i0));
    const int cols = static_cast<int>(std::min<int64_t>(RB, N - j0));
    // Rows past the edge repeat the last one: computed, not stored.
    const float* a[RA];
    const float* b[RB];
    for (int i = 0; i < RA; ++i) a[i] = A + (i0 + std::min(i, rows - 1)) * lda;
    for (int j = 0; j < RB; ++j) b[j] = B(j0 + std::min(j, cols - 1));
    dot_tile<T, RA, RB>(K, a, b, C + i0 * ldc + j0, ldc, rows, cols, alpha, beta);
  };
  const int64_t a_span = ((M - 1) * lda + K) * static_cast<int64_t>(sizeof(float));
  const int64_t b_span = span_of_rows(B, N, K);
  const int64_t a_tiles = (M + RA - 1) / RA, b_tiles = (N + RB - 1) / RB;
  if (a_tiles * b_span < b_tiles * a_span) {  // B streams once per tile of A
    for (int64_t i0 = 0; i0 < M; i0 += RA)
      for (int64_t j0 = 0; j0 < N; j0 += RB) tile(i0, j0);
  } else {  // A streams once per tile of B
    for (int64_t j0 = 0; j0 < N; j0 += RB)
      for (int64_t i0 = 0; i0 < M; i0 += RA) tile(i0, j0);
  }
}

#undef POLYAK_SGEMM_INLINE

}  // namespace
}  // namespace polyak::cpu::detail
#endif  // POLYAK_SGEMM_TARGET
