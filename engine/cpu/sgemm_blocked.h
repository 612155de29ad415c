// The blocked matrix product behind polyak::cpu::sgemm (engine/cpu/sgemm.h), shared by
// the vector instruction sets. Each of sgemm_avx512.cpp and sgemm_avx2.cpp defines
// POLYAK_SGEMM_TARGET (a target attribute) and a vector traits struct, then includes
// this file: every function here carries that attribute, so those files build even
// when the compiler's default target lacks the instructions, and the dispatcher in
// sgemm.cpp only calls them on a CPU that has them. Everything is in an anonymous
// namespace: the two instruction sets never share a compiled function.
//
// The method is Goto's (as in GotoBLAS and BLIS), with row-major roles:
//
//   for each slice of K of depth kc (<= KC_MAX):        beta applies in the first slice
//     pack op(A)[:, slice] into row panels of MR rows, each stored k-major: a[k*MR + r]
//     for each block of N of width nc (kc x nc of B about 1 MB, for the 2 MB L2):
//       pack op(B)[slice, block] into column panels of NR columns, stored b[k*NR + j]
//       for each row panel of A (kc x MR: stays in L1 across the loop below)
//         for each column panel of B (streams from L2)
//           micro-kernel: the MR x NR tile of C in registers, for k < kc
//             acc[r][v] += broadcast(a[k*MR + r]) * b[k*NR + v*L .. + L)
//
// The micro-kernel holds MR x (NR / L) vector accumulators (L floats per vector) and
// loads NR / L vectors of B plus MR broadcasts of A per step of k. The transposes are
// done by the packing (8 x 8 blocks in AVX registers): op(A) = A needs one (its rows
// are contiguous along k), op(B) = B^T too; the other two cases copy rows. Edges: the
// kernel is instantiated for every smaller tile (ROWS < MR, fewer vectors), the last
// partial vector of B is padded with zeros (lanes are independent: they only keep
// stray values out of the arithmetic) and C is loaded and stored there under a mask.
// A tile one vector wide takes two row panels at once, for enough accumulators.
//
// Packing costs a pass over the operand and pays for itself by reuse, which the small
// products of a convolution (one image at a time) often lack. So:
//   - with at most 32 row panels (M <= 32 * MR), full panels of op(B) = B are read in
//     place, ldb floats apart (or through the row offsets of sgemm_indirect_b), and
//     so is the last partial panel when it is two or more whole vectors; otherwise
//     only that panel is packed;
//   - when N fits in one panel (N <= NR), op(A) = A^T is read in place (its MR rows
//     side by side along k, lda apart), and when N fits in one vector op(A) = A is
//     too (one row of A per row of the tile).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "engine/cpu/sgemm.h"
#include "engine/cpu/sgemm_paths.h"

// x86-64 only: sgemm_avx512.cpp and sgemm_avx2.cpp define POLYAK_SGEMM_TARGET there alone.
#ifdef POLYAK_SGEMM_TARGET
#include <immintrin.h>

namespace polyak::cpu::detail {
namespace {

#define POLYAK_SGEMM_INLINE POLYAK_SGEMM_TARGET inline __attribute__((always_inline))

// The transpose of an 8 x 8 block: dst[i*dst_ld + j] = src[j][k + i] for i, j < 8,
// where rows j >= rows of the source read as zeros and only the first `lanes` columns
// of dst are written (FULL: all of both). Each 128-bit half of a register is loaded
// from its own row (rows j and j + 4 side by side), which leaves two 4 x 4 transposes
// within the halves: 16 shuffles for the 64 floats.
template <bool FULL>
POLYAK_SGEMM_INLINE void transpose_8x8(const float* const* src, int64_t k, int rows, float* dst, int64_t dst_ld,
                                       int lanes) {
  __m128 row[8][2];  // [j][half]: columns 0-3 and 4-7 of source row j
  for (int j = 0; j < 8; ++j) {
    const bool live = FULL || j < rows;
    row[j][0] = live ? _mm_loadu_ps(src[j] + k) : _mm_setzero_ps();
    row[j][1] = live ? _mm_loadu_ps(src[j] + k + 4) : _mm_setzero_ps();
  }
  __m256 out[8];
  for (int h = 0; h < 2; ++h) {  // source columns 4h .. 4h + 3 become dst rows 4h .. 4h + 3
    __m256 r[4];
    for (int j = 0; j < 4; ++j) r[j] = _mm256_insertf128_ps(_mm256_castps128_ps256(row[j][h]), row[j + 4][h], 1);
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    out[4 * h + 0] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    out[4 * h + 1] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    out[4 * h + 2] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    out[4 * h + 3] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  }
  if (FULL || lanes == 8) {
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + i * dst_ld, out[i]);
  } else {
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int i = 0; i < 8; ++i) _mm256_maskstore_ps(dst + i * dst_ld, mask, out[i]);
  }
}

// One row of a panel: dst[j] = src[j] for j < w, 0 for w <= j < W (for a panel of B, W a
// multiple of L: up to w rounded up to L, as the kernel reads no further).
template <class T, int W>
POLYAK_SGEMM_INLINE void copy_panel_row(const float* src, int w, float* dst) {
  constexpr int L = T::L;
  if constexpr (W % L == 0) {
    if (w == W) {
      for (int v = 0; v < W / L; ++v) T::store(dst + v * L, T::load(src + v * L));
    } else {
      const int full = w / L, rest = w - full * L;
      for (int v = 0; v < full; ++v) T::store(dst + v * L, T::load(src + v * L));
      if (rest > 0) T::store(dst + full * L, T::load_first(src + full * L, rest));
    }
  } else if (W % 8 == 0 && w == W) {
    for (int j = 0; j < W; j += 8) _mm256_storeu_ps(dst + j, _mm256_loadu_ps(src + j));
  } else {
    for (int j = 0; j < w; ++j) dst[j] = src[j];
    for (int j = w; j < W; ++j) dst[j] = 0.0f;
  }
}

// Panels of W columns from a source whose rows lie along k, `width` columns in all (the
// last panel padded with zeros): panel q is dst[q*W*kc + k*W + j] = src(k0 + k)[col0 + q*W + j].
// k runs outside a group of a few panels, so that each visit to a row of the source
// (rows can be pages apart) reads a few cache lines of it, not a part of one.
template <class T, int W>
POLYAK_SGEMM_TARGET void pack_rows(const RowMap& src, int64_t k0, int64_t col0, int64_t width, int64_t kc, float* dst) {
  constexpr int64_t GROUP = (64 + W - 1) / W;  // panels whose row segments make >= 64 floats
  const int64_t panels = (width + W - 1) / W;
  for (int64_t q0 = 0; q0 < panels; q0 += GROUP) {
    const int64_t q1 = std::min(panels, q0 + GROUP);
    for (int64_t k = 0; k < kc; ++k) {
      const float* row = src(k0 + k) + col0;
      for (int64_t q = q0; q < q1; ++q) {
        const int w = static_cast<int>(std::min<int64_t>(W, width - q * W));
        copy_panel_row<T, W>(row + q * W, w, dst + q * W * kc + k * W);
      }
    }
  }
}

// A panel of W columns whose columns lie along k in the source (a transpose):
// dst[k*W + j] = src(j0 + j)[k0 + k] for j < w, 0 for w <= j < min(W, w rounded up to
// L), k < kc. Columns past that are never read (the kernel loads whole vectors of L).
template <int W, int L>
POLYAK_SGEMM_TARGET void pack_transposed(const RowMap& src, int64_t j0, int64_t k0, int w, int64_t kc, float* dst) {
  const int written = std::min(W, (w + L - 1) / L * L);
  for (int j = 0; j < written; j += 8) {  // blocks of 8 columns of the panel (rows of the source)
    const int rows = std::clamp(w - j, 0, 8), lanes = std::min(8, written - j);
    const float* s[8];
    for (int i = 0; i < rows; ++i) s[i] = src(j0 + j + i) + k0;
    int64_t k = 0;
    if (rows == 8 && lanes == 8) {
      for (; k + 8 <= kc; k += 8) transpose_8x8<true>(s, k, 8, dst + k * W + j, W, 8);
    } else if (rows > 0) {
      for (; k + 8 <= kc; k += 8) transpose_8x8<false>(s, k, rows, dst + k * W + j, W, lanes);
    }
    for (; k < kc; ++k)
      for (int i = 0; i < lanes; ++i) dst[k * W + j + i] = i < rows ? s[i][k] : 0.0f;
  }
}

// dst (cols x rows) = src^T, block by block of 8 x 8 (the edges element by element).
POLYAK_SGEMM_TARGET inline void transpose_blocks(int64_t rows, int64_t cols, const float* src, int64_t ld_src,
                                                 float* dst, int64_t ld_dst) {
  for (int64_t i0 = 0; i0 < rows; i0 += 8) {
    const int n = static_cast<int>(std::min<int64_t>(8, rows - i0));
    const float* s[8];
    for (int i = 0; i < n; ++i) s[i] = src + (i0 + i) * ld_src;
    int64_t k = 0;
    if (n == 8) {
      for (; k + 8 <= cols; k += 8) transpose_8x8<true>(s, k, 8, dst + k * ld_dst + i0, ld_dst, 8);
    } else {
      for (; k + 8 <= cols; k += 8) transpose_8x8<false>(s, k, n, dst + k * ld_dst + i0, ld_dst, n);
    }
    for (; k < cols; ++k)
      for (int i = 0; i < n; ++i) dst[k * ld_dst + i0 + i] = s[i][k];
  }
}

// The lines of one range of an SgemmPrefetch still to request: the next (at) up to the
// end of its run, then `runs_left` more runs, `stride` bytes apart.
struct PrefetchStream {
  const char *at = nullptr, *run_begin = nullptr, *run_end = nullptr;
  int64_t stride = 0, runs_left = 0;

  explicit PrefetchStream(const SgemmPrefetch::Range& range)
      : at(static_cast<const char*>(range.begin)),
        run_begin(at),
        run_end(at + (range.runs > 0 ? range.bytes : 0)),
        stride(range.stride),
        runs_left(range.runs - 1) {}
  PrefetchStream() = default;
  static int64_t lines(const SgemmPrefetch::Range& range) { return range.runs * ((range.bytes + 63) / 64); }
  // Past the line just requested, into the next run at the end of this one.
  void advance() {
    at += 64;
    if (at >= run_end && runs_left > 0) run_begin += stride, run_end += stride, at = run_begin, --runs_left;
  }
};

// The lines of an SgemmPrefetch still to request, shared out over the micro-kernel calls
// of a product: each call requests the next line of each range every `every` steps of k
// (at k = 0, every, 2 every, ...), and advances the cursors past them.
struct PrefetchCursor {
  PrefetchStream read[2], write;
  int64_t every;  // 1 <= every <= the slice's depth
};

// Where a tile of B meets the edges of the image rows it holds (row edges:
// sgemm_packed_a in sgemm.h). Either B's rows come in triples of taps that read the
// column to the left, the column itself and the one to the right, and its columns are
// pixels (tap_columns 0; B is read through row offsets); or its rows are pixels and its
// columns the three taps in blocks of tap_columns. Row k0 of the tile's slice is row
// k0 of B, and its columns start at col.
struct TileEdges {
  int64_t row_length, k0, col, tap_columns;
};

// How a kernel reads B: whole, or under the edge masks of taps along its rows or along
// its columns.
enum class Edges { None, TapRows, TapColumns };

// The lanes of the tile's vectors that a left tap (left) and a right tap (right) keep:
// all but those at the first column of an image row (for left taps, which would read the
// previous row's last value) and at its last column (for right taps). Columns start at
// `col`, a multiple of L, and row_length is a multiple of L or divides it.
template <class T, int NV>
POLYAK_SGEMM_INLINE void edge_masks(const TileEdges& edges, typename T::Mask (&left)[NV],
                                    typename T::Mask (&right)[NV]) {
  constexpr int L = T::L;
  const int64_t length = edges.row_length;
  for (int v = 0; v < NV; ++v) {
    uint32_t first = 0, final = 0;  // the lanes at a row's first and last column
    if (length % L == 0) {
      const int64_t at = (edges.col + v * L) % length;
      if (at == 0) first = 1u;
      if (at + L == length) final = 1u << (L - 1);
    } else {
      for (int64_t lane = 0; lane < L; lane += length) first |= 1u << lane, final |= 1u << (lane + length - 1);
    }
    constexpr uint32_t all = (1u << L) - 1u;
    left[v] = static_cast<typename T::Mask>(all & ~first);
    right[v] = static_cast<typename T::Mask>(all & ~final);
  }
}

// Requests the cursors' next lines at steps 0, every, 2 every, ... of k.
POLYAK_SGEMM_INLINE void prefetch_at(PrefetchCursor& pf, int64_t k, int64_t& next_request) {
  if (k != next_request) return;
  next_request += pf.every;
  for (PrefetchStream& read : pf.read)
    if (read.at < read.run_end) _mm_prefetch(read.at, _MM_HINT_T1), read.advance();
  // prefetchw where the target has it (the AVX-512 kernels always), else prefetcht0
  if (pf.write.at < pf.write.run_end) __builtin_prefetch(pf.write.at, 1, 3), pf.write.advance();
}

// One step of k: acc[r][v] += A(r, k) * the vectors of B's row at bk, loaded under
// `masks` (lanes outside read as zero) unless Mask is std::nullptr_t. A's element (r, k)
// is at a + r * a_next (A_ROWS) or a + (r / MR) * a_next + r % MR (see micro_kernel).
template <class T, int MR, int ROWS, int NV, bool A_ROWS, class Mask>
POLYAK_SGEMM_INLINE void tile_step(typename T::V (&acc)[ROWS][NV], const float* a, int64_t a_next,
                                   const float* bk, Mask masks) {
  using V = typename T::V;
  constexpr int L = T::L;
  V bv[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    if constexpr (std::is_same_v<Mask, std::nullptr_t>) {
      bv[v] = T::load(bk + v * L);
    } else {
      bv[v] = T::load_masked(bk + v * L, masks[v]);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < ROWS; ++r) {
    const V ar = T::set1(A_ROWS ? a[r * a_next] : a[(r / MR) * a_next + r % MR]);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = T::fma(ar, bv[v], acc[r][v]);
  }
}

// C tile (ROWS x (NV-1)*L + last) = alpha * A rows * B panel + beta * C tile; beta == 0
// never reads C. B's row k is at b + k * ldb, or with B_TABLE at b + b_rows[k]. A's
// element (r, k) is
//   A_ROWS false: a[(r / MR) * a_next + r % MR + k * a_step]: MR rows side by side along
//                 k, a_step apart (packed: a_step = MR, and a tile taller than MR spans
//                 consecutive panels, a_next apart; or op(A) = A^T read in place)
//   A_ROWS true:  a[r * a_next + k]: rows along k (op(A) = A read in place).
// With EDGES (TileEdges, edges non-null), B's elements across the edges of its image
// rows read as zero: lanes of the left and right taps' rows (TapRows, with B_TABLE), or
// the left and right taps' columns at an image row's first and last pixel (TapColumns).
template <class T, int MR, int ROWS, int NV, bool A_ROWS, bool B_TABLE, Edges EDGES = Edges::None>
POLYAK_SGEMM_TARGET void micro_kernel(int64_t kc, const float* __restrict a, int64_t a_next, int64_t a_step,
                                      const float* __restrict b, int64_t ldb, const int64_t* __restrict b_rows,
                                      float* c, int64_t ldc, float alpha, float beta, int last,
                                      PrefetchCursor* __restrict prefetch, const TileEdges* edges) {
  using V = typename T::V;
  constexpr int L = T::L;
  V acc[ROWS][NV];
#pragma GCC unroll 32
  for (int r = 0; r < ROWS; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = T::zero();
  }
  PrefetchCursor pf = *prefetch;  // a local copy: the cursors stay in registers
  int64_t next_request = 0;
  const int64_t a_k = A_ROWS ? 1 : a_step;  // A's step along k
  if constexpr (EDGES == Edges::TapColumns) {
    static_assert(!B_TABLE, "taps along the columns are read ldb apart");
    // A vector lies in one tap's block of columns (tap_columns is whole vectors).
    using Mask = typename T::Mask;
    constexpr Mask all = static_cast<Mask>((1u << L) - 1u);
    bool left_tap[NV], right_tap[NV];
    for (int v = 0; v < NV; ++v) {
      const int64_t tap = (edges->col + v * L) / edges->tap_columns;
      left_tap[v] = tap == 0, right_tap[v] = tap == 2;
    }
    const int64_t length = edges->row_length;
    int64_t column = edges->k0 % length;  // of row k's pixel in its image row
    for (int64_t k = 0; k < kc; ++k, column = column + 1 == length ? 0 : column + 1) {
      prefetch_at(pf, k, next_request);
      const float* bk = b + k * ldb;
      if (column == 0 || column == length - 1) {  // the first or last pixel: drop the taps across the edge
        Mask masks[NV];
        for (int v = 0; v < NV; ++v)
          masks[v] = (column == 0 && left_tap[v]) || (column == length - 1 && right_tap[v]) ? Mask{0} : all;
        tile_step<T, MR, ROWS, NV, A_ROWS>(acc, a + k * a_k, a_next, bk, masks);
      } else {
        tile_step<T, MR, ROWS, NV, A_ROWS>(acc, a + k * a_k, a_next, bk, nullptr);
      }
    }
  } else if constexpr (EDGES == Edges::TapRows) {
    static_assert(B_TABLE, "row edges are read through row offsets");
    using Mask = typename T::Mask;
    Mask left[NV], right[NV], all[NV];
    edge_masks<T, NV>(*edges, left, right);
    for (int v = 0; v < NV; ++v) all[v] = static_cast<Mask>((1u << L) - 1u);
    const Mask* const by_tap[3] = {left, all, right};
    // Row k of the slice is tap (k0 + k) % 3 of its triple: single steps up to the first
    // left tap, whole triples with their masks fixed, single steps after the last.
    const int64_t phase = edges->k0 % 3;
    const auto single = [&](int64_t k) POLYAK_SGEMM_TARGET {  // lambdas do not inherit the target
      prefetch_at(pf, k, next_request);
      tile_step<T, MR, ROWS, NV, A_ROWS>(acc, a + k * a_k, a_next, b + b_rows[k], by_tap[(phase + k) % 3]);
    };
    int64_t k = 0;
    for (; k < kc && (phase + k) % 3 != 0; ++k) single(k);
    for (; k + 3 <= kc; k += 3) {
      prefetch_at(pf, k, next_request);
      tile_step<T, MR, ROWS, NV, A_ROWS>(acc, a + k * a_k, a_next, b + b_rows[k], left);
      prefetch_at(pf, k + 1, next_request);
      tile_step<T, MR, ROWS, NV, A_ROWS>(acc, a + (k + 1) * a_k, a_next, b + b_rows[k + 1], nullptr);
      prefetch_at(pf, k + 2, next_request);
      tile_step<T, MR, ROWS, NV, A_ROWS>(acc, a + (k + 2) * a_k, a_next, b + b_rows[k + 2], right);
    }
    for (; k < kc; ++k) single(k);
  } else {
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; ++k, a += a_k, b += B_TABLE ? 0 : ldb) {
      prefetch_at(pf, k, next_request);
      tile_step<T, MR, ROWS, NV, A_ROWS>(acc, a, a_next, B_TABLE ? b + b_rows[k] : b, nullptr);
    }
  }
  *prefetch = pf;
  const V va = T::set1(alpha);
  if (beta == 0.0f) {
#pragma GCC unroll 32
    for (int r = 0; r < ROWS; ++r) {
      float* cr = c + r * ldc;
#pragma GCC unroll 8
      for (int v = 0; v < NV - 1; ++v) T::store(cr + v * L, T::mul(va, acc[r][v]));
      T::store_first(cr + (NV - 1) * L, T::mul(va, acc[r][NV - 1]), last);
    }
  } else {
    const V vb = T::set1(beta);
#pragma GCC unroll 32
    for (int r = 0; r < ROWS; ++r) {
      float* cr = c + r * ldc;
#pragma GCC unroll 8
      for (int v = 0; v < NV - 1; ++v)
        T::store(cr + v * L, T::fma(va, acc[r][v], T::mul(vb, T::load(cr + v * L))));
      float* ce = cr + (NV - 1) * L;
      T::store_first(ce, T::fma(va, acc[r][NV - 1], T::mul(vb, T::load_first(ce, last))), last);
    }
  }
}

// Row panels [p_begin, p_end) of op(A)[:, pc .. pc + kc), panel p at dst + p * MR * kc.
template <class T, int MR>
POLYAK_SGEMM_TARGET void pack_a_slice(bool trans_a, const RowMap& a_rows, int64_t M, int64_t pc, int64_t kc,
                                      int64_t p_begin, int64_t p_end, float* dst) {
  if (trans_a) {  // op(A)[i][k] = A[k*lda + i]: rows along i
    const int64_t i0 = p_begin * MR;
    pack_rows<T, MR>(a_rows, pc, i0, std::min(M, p_end * MR) - i0, kc, dst + i0 * kc);
  } else {  // op(A)[i][k] = A[i*lda + k]: rows along k, transposed
    for (int64_t p = p_begin; p < p_end; ++p) {
      const int rows = static_cast<int>(std::min<int64_t>(MR, M - p * MR));
      pack_transposed<MR, MR>(a_rows, p * MR, pc, rows, kc, dst + p * MR * kc);
    }
  }
}

template <class T, int MR>
POLYAK_SGEMM_TARGET void pack_a(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda, int64_t p_begin,
                                int64_t p_end, float* dst) {
  const int64_t kc_max = sgemm_slice_depth(K), row_panels = (M + MR - 1) / MR;
  for (int64_t pc = 0; pc < K; pc += kc_max)
    pack_a_slice<T, MR>(trans_a, RowMap{A, lda, nullptr}, M, pc, std::min(kc_max, K - pc), p_begin, p_end,
                        dst + row_panels * MR * pc);
}

using KernelFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, const int64_t*, float*,
                          int64_t, float, float, int, PrefetchCursor*, const TileEdges*);

// The instantiations the driver picks from: every tile of up to MR rows and NV_MAX
// vectors on packed A (wide_table: B read in place through its row offsets; where the
// vector type has masks, wide_edges: the same with row edges, and wide_tap_columns: B
// ldb apart with its taps along the columns), and the tiles one vector wide of up to
// 2 * MR rows on packed or unpacked A. A tile one vector wide needs the taller shape to
// keep enough FMAs in flight and to amortise its loads of B. (B is read in place only in
// whole panels, which are never one vector wide, but with row edges.)
template <class T, int MR, int NV_MAX>
struct Kernels {
  template <bool B_TABLE, Edges EDGES = Edges::None, size_t... I>
  static constexpr std::array<KernelFn, MR * NV_MAX> make_wide(std::index_sequence<I...>) {
    return {&micro_kernel<T, MR, static_cast<int>(I / NV_MAX) + 1, static_cast<int>(I % NV_MAX) + 1, false,
                          B_TABLE, EDGES>...};
  }
  template <bool A_ROWS, size_t... I>
  static constexpr std::array<KernelFn, 2 * MR> make_narrow(std::index_sequence<I...>) {
    return {&micro_kernel<T, MR, static_cast<int>(I) + 1, 1, A_ROWS, false>...};
  }
  static constexpr std::array<KernelFn, MR * NV_MAX> wide = make_wide<false>(std::make_index_sequence<MR * NV_MAX>{});
  static constexpr std::array<KernelFn, MR * NV_MAX> wide_table =
      make_wide<true>(std::make_index_sequence<MR * NV_MAX>{});
  static constexpr std::array<KernelFn, MR * NV_MAX> wide_edges() {
    return make_wide<true, Edges::TapRows>(std::make_index_sequence<MR * NV_MAX>{});
  }
  static constexpr std::array<KernelFn, MR * NV_MAX> wide_tap_columns() {
    return make_wide<false, Edges::TapColumns>(std::make_index_sequence<MR * NV_MAX>{});
  }
  static constexpr std::array<KernelFn, 2 * MR> narrow = make_narrow<false>(std::make_index_sequence<2 * MR>{});
  static constexpr std::array<KernelFn, 2 * MR> narrow_rows = make_narrow<true>(std::make_index_sequence<2 * MR>{});
};

// The whole product, for K > 0 and alpha != 0 (the dispatcher handles the rest). With
// b_rows, B's stored rows are at B + b_rows[i]; with a_packed, op(A) is packed already
// (pack_a above); with prefetch, its lines are requested along the way; with row_edges
// (op(B) = B, N whole vectors, a vector type with masks, and B through b_rows for taps
// along its rows or ldb apart for taps along its columns), B is read in place under the
// edge masks (sgemm_packed_a in sgemm.h).
template <class T, int MR, int NV_MAX>
POLYAK_SGEMM_TARGET void sgemm_blocked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                                       const float* A, int64_t lda, const float* a_packed, const float* B,
                                       int64_t ldb, const int64_t* b_rows, float beta, float* C, int64_t ldc,
                                       const SgemmPrefetch* prefetch, int64_t row_edges = 0,
                                       int64_t tap_columns = 0) {
  using Table = Kernels<T, MR, NV_MAX>;
  constexpr int L = T::L, NR = NV_MAX * L;
  constexpr int64_t B_BLOCK = 256 * 1024;  // floats of packed B per block: 1 MB

  // Even slices of K, and even blocks of N in whole panels, avoid a thin last one.
  const int64_t kc_max = sgemm_slice_depth(K);
  const int64_t row_panels = (M + MR - 1) / MR;
  const int64_t nc_limit = std::max<int64_t>(NR, B_BLOCK / kc_max / NR * NR);
  const int64_t blocks = (N + nc_limit - 1) / nc_limit;
  const int64_t nc_max = ((N + blocks - 1) / blocks + NR - 1) / NR * NR;
  // Packing pays for itself by reuse. A panel of op(B) = B serves row_panels tiles;
  // up to 32 of them (256 rows of C), its rows are read in place (ldb apart, or through
  // the row offsets) instead: on the ResNet convolutions (apps/sgemm_bench), reading
  // a panel from L2 once per row panel beat one pass to pack it up to there
  // (measurements: docs/PERFORMANCE.md, "SGEMM: reading B in place instead of packing").
  // A panel of op(A) serves one tile when N fits one panel, and is then read in place:
  // op(A) = A^T as it is, op(A) = A (one row of A per row of C) only by the tiles one
  // vector wide. Row edges mask B as the kernels read it: it is never packed.
  const bool direct_b = !trans_b && (row_panels <= 32 || row_edges > 0);
  const RowMap a_rows{A, lda, nullptr}, b_map{B, ldb, b_rows};
  const bool direct_a = !a_packed && (trans_a ? N <= NR : N <= L);
  float* const a_buffer = sgemm_pack_buffer(0, direct_a || a_packed ? 0 : row_panels * MR * kc_max);
  float* const b_pack = sgemm_pack_buffer(1, nc_max * kc_max);

  // The prefetches: the longest range's lines spread evenly over the micro-kernel calls
  // (one per tile: K / kc slices of row_panels x N / NR).
  PrefetchCursor cursor{{}, {}, kc_max};
  if (prefetch) {
    int64_t longest = PrefetchStream::lines(prefetch->write);  // in lines
    for (int i = 0; i < 2; ++i) {
      cursor.read[i] = PrefetchStream(prefetch->reads[i]);
      longest = std::max(longest, PrefetchStream::lines(prefetch->reads[i]));
    }
    cursor.write = PrefetchStream(prefetch->write);
    const int64_t calls = (K + kc_max - 1) / kc_max * row_panels * ((N + NR - 1) / NR);
    const int64_t per_call = (longest + calls - 1) / calls;
    if (per_call > 0) cursor.every = std::clamp<int64_t>(kc_max / per_call, 1, kc_max);
  }

  for (int64_t pc = 0; pc < K; pc += kc_max) {
    const int64_t kc = std::min(kc_max, K - pc);
    const float beta_slice = pc == 0 ? beta : 1.0f;
    const float* a_pack = a_packed ? a_packed + row_panels * MR * pc : a_buffer;
    if (!direct_a && !a_packed) pack_a_slice<T, MR>(trans_a, a_rows, M, pc, kc, 0, row_panels, a_buffer);
    for (int64_t jc = 0; jc < N; jc += nc_max) {
      const int64_t nc = std::min(nc_max, N - jc);
      // The columns read in place: the whole panels, and a last narrower one if it is
      // whole vectors (the kernel loads no further) and at least two of them (a tile one
      // vector wide has no kernel that reads B through row offsets).
      const int64_t rest = nc % NR;
      const int64_t full = !direct_b ? 0 : rest % L == 0 && (rest >= 2 * L || row_edges > 0) ? nc : nc - rest;
      if (trans_b) {
        for (int64_t j0 = 0; j0 < nc; j0 += NR) {  // op(B)[k][j] = B[j*ldb + k]
          const int cols = static_cast<int>(std::min<int64_t>(NR, nc - j0));
          pack_transposed<NR, L>(b_map, jc + j0, pc, cols, kc, b_pack + j0 * kc);
        }
      } else if (full < nc) {
        pack_rows<T, NR>(b_map, pc, jc + full, nc - full, kc, b_pack + full * kc);  // op(B)[k][j] = B(k)[j]
      }
      for (int64_t p = 0; p < row_panels; ++p) {
        const int64_t i0 = p * MR;
        const int rows = static_cast<int>(std::min<int64_t>(MR, M - i0));
        for (int64_t j0 = 0; j0 < nc; j0 += NR) {
          const int cols = static_cast<int>(std::min<int64_t>(NR, nc - j0));
          const int vectors = (cols + L - 1) / L, last = cols - (vectors - 1) * L;
          const bool in_place = j0 < full;
          const float* b = !in_place ? b_pack + j0 * kc : b_rows ? B + jc + j0 : B + pc * ldb + jc + j0;
          const int64_t b_step = in_place ? ldb : NR;
          const int64_t* b_table = in_place && b_rows ? b_rows + pc : nullptr;
          float* c = C + i0 * ldc + jc + j0;
          const float* a = a_pack + i0 * kc;  // packed: MR rows side by side along k
          int64_t a_next = MR * kc, a_step = MR;
          if (direct_a && trans_a) {  // in place, the same way: rows side by side, lda apart
            a = A + pc * lda + i0, a_next = MR, a_step = lda;
          } else if (direct_a) {  // in place, one row of A per row of C
            a = A + i0 * lda + pc, a_next = lda, a_step = 1;
          }
          if constexpr (T::kMasks) {
            if (row_edges > 0) {
              static constexpr std::array<KernelFn, MR * NV_MAX> wide_edges = Table::wide_edges();
              static constexpr std::array<KernelFn, MR * NV_MAX> wide_tap_columns = Table::wide_tap_columns();
              const TileEdges edges{row_edges, pc, jc + j0, tap_columns};
              const auto& kernels = tap_columns > 0 ? wide_tap_columns : wide_edges;
              kernels[(rows - 1) * NV_MAX + vectors - 1](kc, a, a_next, a_step, b, b_step, b_table, c, ldc, alpha,
                                                         beta_slice, last, &cursor, &edges);
              continue;
            }
          }
          if (vectors > 1) {  // (never with op(A) = A in place: N <= L there)
            const auto& wide = b_table ? Table::wide_table : Table::wide;
            wide[(rows - 1) * NV_MAX + vectors - 1](kc, a, a_next, a_step, b, b_step, b_table, c, ldc, alpha,
                                                    beta_slice, last, &cursor, nullptr);
          } else if (p % 2 == 0) {  // one vector wide: two row panels per tile
            const int tall = p + 1 < row_panels ? rows + static_cast<int>(std::min<int64_t>(MR, M - i0 - MR)) : rows;
            const auto& narrow = direct_a && !trans_a ? Table::narrow_rows : Table::narrow;
            narrow[tall - 1](kc, a, a_next, a_step, b, b_step, nullptr, c, ldc, alpha, beta_slice, last, &cursor,
                             nullptr);
          }
        }
      }
    }
  }
}

#undef POLYAK_SGEMM_INLINE

}  // namespace
}  // namespace polyak::cpu::detail
#endif  // POLYAK_SGEMM_TARGET
