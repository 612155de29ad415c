// What sgemm's dispatcher (sgemm.cpp) and its vector paths (sgemm_avx512.cpp,
// sgemm_avx2.cpp) share: the paths' entry points, the packing of A ahead of the
// products, the per-thread buffers. Plain declarations without intrinsics, so that the
// dispatcher compiles for any architecture; the kernels are in sgemm_blocked.h and
// sgemm_dot.h.
#pragma once

#include <cstdint>

#include "engine/cpu/sgemm.h"

namespace polyak::cpu::detail {

// Aligned per-thread scratch (sgemm.cpp): slot 0 holds the packed A, slot 1 the packed B.
float* sgemm_pack_buffer(int slot, int64_t floats);

// b_rows: null, or the offsets of B's stored rows (sgemm_indirect_b in sgemm.h).
// a_packed: null, or all of op(A) packed beforehand by sgemm_pack_a_* (then A is unused).
// prefetch: null, or the lines to request during the product (SgemmPrefetch in sgemm.h).
// row_edges, tap_columns: B's edge masks, AVX-512 only (sgemm_packed_a in sgemm.h);
// row_edges 0 for none.
void sgemm_avx512(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, const float* a_packed, const float* B, int64_t ldb, const int64_t* b_rows, float beta,
                  float* C, int64_t ldc, const SgemmPrefetch* prefetch, int64_t row_edges, int64_t tap_columns);
void sgemm_avx2(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                int64_t lda, const float* a_packed, const float* B, int64_t ldb, const int64_t* b_rows, float beta,
                float* C, int64_t ldc, const SgemmPrefetch* prefetch);

// dst = src^T (engine/cpu/sgemm.h: transpose), in AVX registers.
void sgemm_transpose_avx2(int64_t rows, int64_t cols, const float* src, int64_t ld_src, float* dst, int64_t ld_dst);

// The rows of a micro-kernel's tile (MR): the height of a packed panel of op(A).
constexpr int kAvx512TileRows = 8, kAvx2TileRows = 6;

// Packing of all of op(A) (M x K) ahead of the products, row panels [p_begin, p_end)
// of it (so that threads can share the work): dst holds row_panels * MR * K floats,
// the slice of K starting at pc at dst + row_panels * MR * pc, laid out as the
// product's own packing lays it out.
void sgemm_pack_a_avx512(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda, int64_t p_begin,
                         int64_t p_end, float* dst);
void sgemm_pack_a_avx2(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda, int64_t p_begin,
                       int64_t p_end, float* dst);

// The depth of K's slices: even slices of at most 384 (with a tile's accumulators, a
// slice of a packed panel of op(A) stays in L1 while the panels of op(B) stream by).
inline int64_t sgemm_slice_depth(int64_t K) {
  constexpr int64_t KC_MAX = 384;
  const int64_t slices = (K + KC_MAX - 1) / KC_MAX;
  return (K + slices - 1) / slices;
}

// The stored rows of an operand: row i at base + i * ld, or at base + offsets[i].
struct RowMap {
  const float* base;
  int64_t ld;
  const int64_t* offsets;  // null: evenly spaced
  const float* operator()(int64_t i) const { return base + (offsets ? offsets[i] : i * ld); }
};

}  // namespace polyak::cpu::detail
