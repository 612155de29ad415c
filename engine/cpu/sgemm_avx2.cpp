// sgemm for CPUs with AVX2 and FMA (engine/cpu/sgemm_blocked.h has the method).
// Micro-kernel 6 x 16: 12 ymm accumulators, 2 vector loads of B and 6 broadcasts of A
// per step of k, the classic shape for 16 vector registers.
// x86-64 only: elsewhere this file is empty, and sgemm.cpp runs the scalar path.
#if defined(__x86_64__)
#define POLYAK_SGEMM_TARGET __attribute__((target("avx2,fma")))
#include "engine/cpu/sgemm_blocked.h"
#include "engine/cpu/sgemm_dot.h"

namespace polyak::cpu::detail {
namespace {

struct Avx2 {
  using V = __m256;
  static constexpr int L = 8;
  static constexpr bool kMasks = false;  // no lane masks: no row edges (sgemm_packed_a)
  POLYAK_SGEMM_TARGET static __m256i first(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  POLYAK_SGEMM_TARGET static V zero() { return _mm256_setzero_ps(); }
  POLYAK_SGEMM_TARGET static V set1(float x) { return _mm256_set1_ps(x); }
  POLYAK_SGEMM_TARGET static V load(const float* p) { return _mm256_loadu_ps(p); }
  POLYAK_SGEMM_TARGET static V load_first(const float* p, int n) { return _mm256_maskload_ps(p, first(n)); }
  POLYAK_SGEMM_TARGET static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  POLYAK_SGEMM_TARGET static void store_first(float* p, V v, int n) { _mm256_maskstore_ps(p, first(n), v); }
  POLYAK_SGEMM_TARGET static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  POLYAK_SGEMM_TARGET static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  POLYAK_SGEMM_TARGET static __m256 halves_added(V v) { return v; }  // already a vector of 8
  POLYAK_SGEMM_TARGET static float sum_lanes(V v) {
    const __m128 quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    return _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)));
  }
};

}  // namespace

POLYAK_SGEMM_TARGET void sgemm_avx2(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                                    const float* A, int64_t lda, const float* a_packed, const float* B, int64_t ldb,
                                    const int64_t* b_rows, float beta, float* C, int64_t ldc,
                                    const SgemmPrefetch* prefetch) {
  if (!a_packed && dot_products_pay(trans_a, trans_b, M, K)) {  // tiles of 3 x 3: 9 accumulators, 6 loads per step
    sgemm_dot<Avx2, 3, 3>(M, N, K, alpha, A, lda, RowMap{B, ldb, b_rows}, beta, C, ldc);
    return;
  }
  sgemm_blocked<Avx2, kAvx2TileRows, 2>(trans_a, trans_b, M, N, K, alpha, A, lda, a_packed, B, ldb, b_rows,
                                        beta, C, ldc, prefetch);
}

POLYAK_SGEMM_TARGET void sgemm_pack_a_avx2(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda,
                                           int64_t p_begin, int64_t p_end, float* dst) {
  pack_a<Avx2, kAvx2TileRows>(trans_a, M, K, A, lda, p_begin, p_end, dst);
}

POLYAK_SGEMM_TARGET void sgemm_transpose_avx2(int64_t rows, int64_t cols, const float* src, int64_t ld_src, float* dst,
                                              int64_t ld_dst) {
  transpose_blocks(rows, cols, src, ld_src, dst, ld_dst);
}

}  // namespace polyak::cpu::detail

#endif  // x86-64
