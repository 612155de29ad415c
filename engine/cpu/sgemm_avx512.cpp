// sgemm for CPUs with AVX-512 (engine/cpu/sgemm_blocked.h has the method). Micro-kernel
// 8 x 48: 24 zmm accumulators, 3 vector loads of B and 8 broadcasts of A per step of k.
// Eight rows divide the output channels of every convolution (16..512), and 48 columns
// divide most of the filter-gradient widths C*R*S (144, 288, 576, ...).
// x86-64 only: elsewhere this file is empty, and sgemm.cpp runs the scalar path.
#if defined(__x86_64__)
#define POLYAK_SGEMM_TARGET __attribute__((target("avx2,fma,avx512f,avx512vl,avx512bw,avx512dq,prfchw")))
#include "engine/cpu/sgemm_blocked.h"
#include "engine/cpu/sgemm_dot.h"

namespace polyak::cpu::detail {
namespace {

struct Avx512 {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int L = 16;
  static constexpr bool kMasks = true;  // lane masks: the kernels can read B under row edges
  POLYAK_SGEMM_TARGET static __mmask16 first(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  POLYAK_SGEMM_TARGET static V zero() { return _mm512_setzero_ps(); }
  POLYAK_SGEMM_TARGET static V set1(float x) { return _mm512_set1_ps(x); }
  POLYAK_SGEMM_TARGET static V load(const float* p) { return _mm512_loadu_ps(p); }
  POLYAK_SGEMM_TARGET static V load_first(const float* p, int n) { return _mm512_maskz_loadu_ps(first(n), p); }
  POLYAK_SGEMM_TARGET static V load_masked(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  POLYAK_SGEMM_TARGET static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  POLYAK_SGEMM_TARGET static void store_first(float* p, V v, int n) { _mm512_mask_storeu_ps(p, first(n), v); }
  POLYAK_SGEMM_TARGET static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  POLYAK_SGEMM_TARGET static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  // The halves through the masked extract: _mm512_reduce_add_ps and the plain casts
  // use an undefined register that GCC 12 reports as maybe uninitialised. A vector of
  // 16 as one of 8 with the same sum: its two halves added.
  POLYAK_SGEMM_TARGET static __m256 halves_added(V v) {
    const __m512d d = _mm512_castps_pd(v);
    return _mm256_add_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, d, 0)),
                         _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, d, 1)));
  }
  POLYAK_SGEMM_TARGET static float sum_lanes(V v) {
    const __m256 half = halves_added(v);
    const __m128 quad = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
    const __m128 pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
  }
};

}  // namespace

POLYAK_SGEMM_TARGET void sgemm_avx512(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                                      const float* A, int64_t lda, const float* a_packed, const float* B, int64_t ldb,
                                      const int64_t* b_rows, float beta, float* C, int64_t ldc,
                                      const SgemmPrefetch* prefetch, int64_t row_edges, int64_t tap_columns) {
  if (!a_packed && row_edges == 0 && dot_products_pay(trans_a, trans_b, M, K)) {
    // tiles of 4 x 5: 20 accumulators, 9 loads per step
    sgemm_dot<Avx512, 4, 5>(M, N, K, alpha, A, lda, RowMap{B, ldb, b_rows}, beta, C, ldc);
    return;
  }
  sgemm_blocked<Avx512, kAvx512TileRows, 3>(trans_a, trans_b, M, N, K, alpha, A, lda, a_packed, B, ldb, b_rows,
                                            beta, C, ldc, prefetch, row_edges, tap_columns);
}

POLYAK_SGEMM_TARGET void sgemm_pack_a_avx512(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda,
                                             int64_t p_begin, int64_t p_end, float* dst) {
  pack_a<Avx512, kAvx512TileRows>(trans_a, M, K, A, lda, p_begin, p_end, dst);
}

}  // namespace polyak::cpu::detail

#endif  // x86-64
