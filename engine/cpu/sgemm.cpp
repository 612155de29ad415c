// sgemm's dispatcher, the portable scalar path, the reference loop and the per-thread
// packing buffers. The vector paths are in sgemm_avx512.cpp and sgemm_avx2.cpp, and
// exist on x86-64 only: on other architectures no vector instruction set is available,
// and every product takes the scalar path.
#include "engine/cpu/sgemm.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include <sys/mman.h>

#include "engine/cpu/sgemm_paths.h"
#include "engine/parallel.h"

namespace polyak::cpu {

namespace {

SgemmIsa detect_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
#endif
  SgemmIsa best = SgemmIsa::Scalar;
  if (sgemm_isa_available(SgemmIsa::Avx512)) {
    best = SgemmIsa::Avx512;
  } else if (sgemm_isa_available(SgemmIsa::Avx2)) {
    best = SgemmIsa::Avx2;
  }
  const char* forced = std::getenv("POLYAK_SGEMM");
  if (forced == nullptr || *forced == '\0') return best;
  for (SgemmIsa isa : {SgemmIsa::Scalar, SgemmIsa::Avx2, SgemmIsa::Avx512}) {
    if (std::strcmp(forced, sgemm_isa_name(isa)) != 0) continue;
    if (sgemm_isa_available(isa)) return isa;
    std::fprintf(stderr, "polyak: POLYAK_SGEMM=%s is not supported by this CPU; using %s\n", forced,
                 sgemm_isa_name(best));
    return best;
  }
  std::fprintf(stderr, "polyak: POLYAK_SGEMM=%s is not one of scalar, avx2, avx512; using %s\n", forced,
               sgemm_isa_name(best));
  return best;
}

SgemmIsa active_isa() {
  static const SgemmIsa isa = detect_isa();
  return isa;
}

// C = beta * C over an M x N block (beta == 0 writes zeros, whatever C held).
void scale(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  if (beta == 1.0f) return;
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.0f) {
      for (int64_t j = 0; j < N; ++j) c[j] = 0.0f;
    } else {
      for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
  }
}

// Portable loops, for CPUs without AVX2 (C already scaled by beta): rows of C updated
// by rows of op(B), which the compiler vectorises, or dot products when op(B) = B^T has
// its columns along k.
// With row_edges (op(B) = B), the elements of B's left and right taps across an image
// row's edge count as zero (sgemm_packed_a in sgemm.h), the taps along B's rows or,
// with tap_columns, along its columns.
void sgemm_scalar(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                  int64_t lda, const detail::RowMap& B, float* C, int64_t ldc, int64_t row_edges = 0,
                  int64_t tap_columns = 0) {
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (!trans_b) {
      for (int64_t k = 0; k < K; ++k) {
        const float a = alpha * (trans_a ? A[k * lda + i] : A[i * lda + k]);
        const float* b = B(k);
        if (row_edges == 0) {
          for (int64_t j = 0; j < N; ++j) c[j] += a * b[j];
          continue;
        }
        for (int64_t j = 0; j < N; ++j) {
          // tap 0: the left neighbour, 1: the pixel itself, 2: the right one
          const int64_t tap = tap_columns > 0 ? j / tap_columns : k % 3;
          const int64_t column = tap_columns > 0 ? k % row_edges : j % row_edges;
          const bool across = (tap == 0 && column == 0) || (tap == 2 && column == row_edges - 1);
          if (!across) c[j] += a * b[j];
        }
      }
    } else {
      for (int64_t j = 0; j < N; ++j) {
        const float* b = B(j);
        float sum = 0.0f;
        for (int64_t k = 0; k < K; ++k) sum += (trans_a ? A[k * lda + i] : A[i * lda + k]) * b[k];
        c[j] += alpha * sum;
      }
    }
  }
}

}  // namespace

bool sgemm_isa_available(SgemmIsa isa) {
#if !defined(__x86_64__)
  return isa == SgemmIsa::Scalar;  // the vector paths are x86-64's
#else
  switch (isa) {
    case SgemmIsa::Scalar:
      return true;
    case SgemmIsa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SgemmIsa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return false;
#endif
}

const char* sgemm_isa_name(SgemmIsa isa) {
  switch (isa) {
    case SgemmIsa::Scalar:
      return "scalar";
    case SgemmIsa::Avx2:
      return "avx2";
    case SgemmIsa::Avx512:
      return "avx512";
  }
  return "?";
}

const char* sgemm_isa() { return sgemm_isa_name(active_isa()); }

SgemmIsa sgemm_active_isa() { return active_isa(); }

namespace {

// Every entry point: B's rows ldb apart, or at the offsets b_rows; op(A) packed
// already when a_packed is given (for the vector paths; the scalar one reads A).
void sgemm_any(SgemmIsa isa, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* a_packed, const float* B, int64_t ldb,
               const int64_t* b_rows, float beta, float* C, int64_t ldc, const SgemmPrefetch* prefetch = nullptr,
               int64_t row_edges = 0, int64_t tap_columns = 0) {
  const bool b_as_needed = tap_columns > 0 ? !b_rows : b_rows != nullptr;
  if (row_edges > 0 && (!b_as_needed || trans_b || !sgemm_row_edges_supported(isa, row_edges, N, tap_columns)))
    throw std::invalid_argument("sgemm: row edges of " + std::to_string(row_edges) + " over " + std::to_string(N) +
                                " columns (taps along " + (tap_columns > 0 ? "columns" : "rows") +
                                ") need op(B) = B, B through row offsets for taps along its rows and ldb apart " +
                                "for taps along its columns, and a supported shape and instruction set (" +
                                sgemm_isa_name(isa) + ")");
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale(M, N, beta, C, ldc);
    return;
  }
  switch (isa) {
#if defined(__x86_64__)
    case SgemmIsa::Avx512:
      detail::sgemm_avx512(trans_a, trans_b, M, N, K, alpha, A, lda, a_packed, B, ldb, b_rows, beta, C, ldc, prefetch,
                           row_edges, tap_columns);
      return;
    case SgemmIsa::Avx2:
      detail::sgemm_avx2(trans_a, trans_b, M, N, K, alpha, A, lda, a_packed, B, ldb, b_rows, beta, C, ldc, prefetch);
      return;
#else
    case SgemmIsa::Avx512:  // not on this architecture (sgemm_isa_available): the portable path,
    case SgemmIsa::Avx2:    // which reads A in place and requests no lines
      static_cast<void>(a_packed), static_cast<void>(prefetch);
      [[fallthrough]];
#endif
    case SgemmIsa::Scalar:
      scale(M, N, beta, C, ldc);
      sgemm_scalar(trans_a, trans_b, M, N, K, alpha, A, lda, detail::RowMap{B, ldb, b_rows}, C, ldc, row_edges,
                   tap_columns);
      return;
  }
}

}  // namespace

void sgemm(SgemmIsa isa, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  sgemm_any(isa, trans_a, trans_b, M, N, K, alpha, A, lda, nullptr, B, ldb, nullptr, beta, C, ldc);
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  sgemm_any(active_isa(), trans_a, trans_b, M, N, K, alpha, A, lda, nullptr, B, ldb, nullptr, beta, C, ldc);
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const SgemmPrefetch& prefetch) {
  sgemm_any(active_isa(), trans_a, trans_b, M, N, K, alpha, A, lda, nullptr, B, ldb, nullptr, beta, C, ldc, &prefetch);
}

void sgemm_indirect_b(SgemmIsa isa, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, const int64_t* b_rows, float beta, float* C,
                      int64_t ldc) {
  sgemm_any(isa, trans_a, trans_b, M, N, K, alpha, A, lda, nullptr, B, 0, b_rows, beta, C, ldc);
}

void sgemm_indirect_b(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                      int64_t lda, const float* B, const int64_t* b_rows, float beta, float* C, int64_t ldc) {
  sgemm_any(active_isa(), trans_a, trans_b, M, N, K, alpha, A, lda, nullptr, B, 0, b_rows, beta, C, ldc);
}

void SgemmPackedA::pack(SgemmIsa isa, bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda) {
  pack(isa, trans_a, M, K, A, lda, true);
}

void SgemmPackedA::pack(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda) {
  pack(active_isa(), trans_a, M, K, A, lda, true);
}

void SgemmPackedA::pack_on_this_thread(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda) {
  pack(active_isa(), trans_a, M, K, A, lda, false);
}

void SgemmPackedA::pack(SgemmIsa isa, bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda,
                        bool on_team) {
  isa_ = isa, trans_a_ = trans_a, M_ = M, K_ = K, A_ = A, lda_ = lda;
  if (isa == SgemmIsa::Scalar || M <= 0 || K <= 0) return;
#if defined(__x86_64__)
  const int tile_rows = isa == SgemmIsa::Avx512 ? detail::kAvx512TileRows : detail::kAvx2TileRows;
  const auto pack_panels = isa == SgemmIsa::Avx512 ? detail::sgemm_pack_a_avx512 : detail::sgemm_pack_a_avx2;
  const int64_t row_panels = (M + tile_rows - 1) / tile_rows;
  if (static_cast<int64_t>(panels_.size()) < row_panels * tile_rows * K)
    panels_.resize(static_cast<size_t>(row_panels * tile_rows * K));
  float* const dst = panels_.data();
  if (!on_team) {
    pack_panels(trans_a, M, K, A, lda, 0, row_panels, dst);
    return;
  }
  parallel_for(row_panels, tile_rows * K, [=](int64_t begin, int64_t end) {
    pack_panels(trans_a, M, K, A, lda, begin, end, dst);
  });
#else
  static_cast<void>(on_team);  // no vector paths here: sgemm_any reads A in place, as for Scalar
#endif
}

void transpose(int64_t rows, int64_t cols, const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  if (active_isa() == SgemmIsa::Scalar) {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
    return;
  }
  // Both vector paths transpose with AVX (8 x 8 blocks); the AVX2 build has it. (Not on
  // other architectures, where the active path is always the scalar one.)
#if defined(__x86_64__)
  detail::sgemm_transpose_avx2(rows, cols, src, ld_src, dst, ld_dst);
#endif
}

void sgemm_packed_a(const SgemmPackedA& a, bool trans_b, int64_t N, float alpha, const float* B, int64_t ldb,
                    const int64_t* b_rows, float beta, float* C, int64_t ldc, const SgemmPrefetch& prefetch,
                    int64_t row_edges, int64_t tap_columns) {
  const float* panels = a.isa_ == SgemmIsa::Scalar ? nullptr : a.panels_.data();
  sgemm_any(a.isa_, a.trans_a_, trans_b, a.M_, N, a.K_, alpha, a.A_, a.lda_, panels, B, ldb, b_rows, beta, C, ldc,
            &prefetch, row_edges, tap_columns);
}

bool sgemm_row_edges_supported(SgemmIsa isa, int64_t row_length, int64_t N, int64_t tap_columns) {
  constexpr int64_t lanes = 16;  // of an AVX-512 vector
  if (row_length <= 0 || tap_columns < 0) return false;
  if (tap_columns > 0) {  // the masks are per step of k: any row length, taps in whole vectors
    if (N != 3 * tap_columns) return false;
    return isa == SgemmIsa::Scalar || (isa == SgemmIsa::Avx512 && tap_columns % lanes == 0);
  }
  const bool shape = (row_length % lanes == 0 || lanes % row_length == 0) && N % lanes == 0;
  return isa == SgemmIsa::Scalar || (isa == SgemmIsa::Avx512 && shape);
}

SgemmIsa packed_isa(const SgemmPackedA& a) { return a.isa_; }

namespace detail {

float* sgemm_pack_buffer(int slot, int64_t floats) {
  struct Buffer {
    float* data = nullptr;
    int64_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffers[2];
  Buffer& buffer = buffers[slot];
  floats = std::max<int64_t>(floats, 16);  // never null
  if (buffer.size < floats) {
    std::free(buffer.data);
    buffer.data = nullptr;
    buffer.size = 0;
    // Large buffers on 2 MB boundaries and, where the kernel allows it, in huge pages:
    // a packed panel is read at a stride of a few KB, one TLB entry per page otherwise.
    constexpr size_t huge = size_t{2} << 20;
    size_t bytes = static_cast<size_t>(floats) * sizeof(float);
    const size_t alignment = bytes >= huge ? huge : 64;
    bytes = (bytes + alignment - 1) / alignment * alignment;
    buffer.data = static_cast<float*>(std::aligned_alloc(alignment, bytes));
    if (buffer.data == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (alignment == huge) madvise(buffer.data, bytes, MADV_HUGEPAGE);
#endif
    buffer.size = floats;
  }
  return buffer.data;
}

}  // namespace detail

}  // namespace polyak::cpu
