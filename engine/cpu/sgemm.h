// Our own single-precision matrix product, so that the CPU backend does not depend on
// which kernels a BLAS build happens to pick for this CPU (Debian's OpenBLAS 0.3.21
// falls back to a generic SSE3 kernel on CPUs it does not recognise).
//
//   C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C
//
// row-major, op(X) = X or X^T, with the semantics of cblas_sgemm(CblasRowMajor, ...):
// beta == 0 ignores the old contents of C (even NaN). It runs on the calling thread
// only: the backend calls it from inside its own parallel regions.
//
// The vector instruction set is chosen once, at the first call, from CPUID: AVX-512
// (avx512f), AVX2 + FMA, or portable scalar code. POLYAK_SGEMM=scalar|avx2|avx512 in
// the environment forces a (supported) one, for tests and measurements. The method is
// described in engine/cpu/sgemm_blocked.h.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace polyak::cpu {

enum class SgemmIsa { Scalar, Avx2, Avx512 };

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The instruction set sgemm uses: "avx512", "avx2" or "scalar"; and as the enum.
const char* sgemm_isa();
SgemmIsa sgemm_active_isa();

// For tests and benchmarks: whether this CPU runs `isa`, its name, and the product
// computed with that instruction set (which must be available).
bool sgemm_isa_available(SgemmIsa isa);
const char* sgemm_isa_name(SgemmIsa isa);
void sgemm(SgemmIsa isa, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The product with B given by the offsets of its stored rows: row i of B (B is K x N, or
// N x K with trans_b) starts at B + b_rows[i] instead of B + i * ldb. A convolution's
// im2col matrix is such a B without being materialised: on a zero-padded image, its row
// of filter tap (c, r, s) is the image shifted by c * H * W + r * W + s
// (engine/cpu/conv2d.cpp).
void sgemm_indirect_b(SgemmIsa isa, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, int64_t lda, const float* B, const int64_t* b_rows, float beta, float* C,
                      int64_t ldc);
void sgemm_indirect_b(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                      int64_t lda, const float* B, const int64_t* b_rows, float beta, float* C, int64_t ldc);

// Memory the caller touches right after a product: the next image it will copy in and
// a residual it will add (reads), the output it will copy the result to (write). The
// product requests their cache lines a few at a time between the steps of its
// micro-kernels, so that waiting for them overlaps the arithmetic; the copies then find
// them in cache. A resnet20 activation is 8 MB per layer, which sits in L3, from where
// one core's copies would otherwise wait on every line
// (measurements: docs/PERFORMANCE.md, "Prefetching around products"). Reads go to L2;
// writes ask for their lines in exclusive state (prefetchw), which spares the stores
// their read-for-ownership. Only a hint: nothing is read or written through it, and the
// lines the product has no steps left for are not requested.
struct SgemmPrefetch {
  // `runs` runs of `bytes` bytes, each `stride` bytes after the one before: the rows of
  // a block of a feature map (the same rows of every channel plane), or one run.
  struct Range {
    const void* begin = nullptr;
    int64_t bytes = 0;
    int64_t runs = 1, stride = 0;

    // The `count` floats from `first` on.
    static Range floats(const float* first, int64_t count) {
      return {first, count * static_cast<int64_t>(sizeof(float))};
    }
    // `runs` runs of `count` floats from `first` on, `stride` floats apart.
    static Range runs_of_floats(const float* first, int64_t count, int64_t runs, int64_t stride) {
      constexpr auto size = static_cast<int64_t>(sizeof(float));
      return {first, count * size, runs, stride * size};
    }
    // Part i of `parts`, split at cache lines: for a caller that runs several products
    // before the memory is touched (one run).
    Range part(int64_t i, int64_t parts) const {
      const int64_t lines = (bytes + 63) / 64, from = lines * i / parts * 64, to = lines * (i + 1) / parts * 64;
      return {static_cast<const char*>(begin) + std::min(bytes, from), std::min(bytes, to) - std::min(bytes, from)};
    }
  };
  Range reads[2];
  Range write;
};

// sgemm above, requesting the lines of `prefetch` as it runs.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const SgemmPrefetch& prefetch);

// op(A) packed once for several products that share it: a convolution's weights, with
// one product per image (or a few). Each product then skips its own pass over A, which
// for the weights of a deep layer (512 x 4608 floats) costs about as much as the
// arithmetic on one small image. The layout is the blocked kernels' own (row panels of
// the tile height, slice by slice of K: engine/cpu/sgemm_blocked.h), so it belongs to
// one instruction set. pack() runs on the thread team (call it outside a parallel
// region); afterwards the object is only read, and threads share it. A must stay valid
// while the object is used: the scalar path reads it in place.
class SgemmPackedA {
 public:
  void pack(SgemmIsa isa, bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda);
  void pack(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda);  // with the instruction set in use
  // The same on the calling thread alone, for use inside a parallel region (one
  // object per thread).
  void pack_on_this_thread(bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda);

 private:
  friend void sgemm_packed_a(const SgemmPackedA& a, bool trans_b, int64_t N, float alpha, const float* B,
                             int64_t ldb, const int64_t* b_rows, float beta, float* C, int64_t ldc,
                             const SgemmPrefetch& prefetch, int64_t row_edges, int64_t tap_columns);
  friend SgemmIsa packed_isa(const SgemmPackedA& a);
  SgemmIsa isa_ = SgemmIsa::Scalar;
  bool trans_a_ = false;
  int64_t M_ = 0, K_ = 0, lda_ = 0;
  const float* A_ = nullptr;
  std::vector<float> panels_;  // kept from one pack() to the next: no fresh pages per call

  void pack(SgemmIsa isa, bool trans_a, int64_t M, int64_t K, const float* A, int64_t lda, bool on_team);
};

// C (M x N) = alpha * op(A) * op(B) + beta * C, with op(A) (M x K) packed in `a`; B's
// rows ldb apart, or at the offsets b_rows as in sgemm_indirect_b (ldb unused).
//
// Row edges (row_edges > 0; with b_rows and op(B) = B): B holds images whose rows of
// row_edges columns lie end to end, with no padding column between them, and B's rows
// come in triples, rows 3t, 3t + 1 and 3t + 2 reading each column's left neighbour, the
// column itself and its right neighbour: the taps of a filter 3 wide on an image padded
// by one column. At the first column of an image row, the left tap reads the previous
// row's last value, and at the last column the right tap reads the next row's first:
// those elements of B are taken as zero, which is what the padding column would have
// held. So a convolution needs no padding columns, and computes no output columns for
// them. row_edges must be a multiple of 16 or divide 16, and N a multiple of 16; it
// needs lane masks: the AVX-512 and scalar paths have them (sgemm_row_edges_supported).
//
// With tap_columns > 0 (and row_edges > 0, B ldb apart, op(B) = B), the roles turn:
// B's rows are the pixels, row_edges of them per image row end to end, and its columns
// the three taps in blocks of tap_columns (a filter gradient's image laid out channels
// last). Element (i, j) is taken as zero where tap j / tap_columns (0: left, 2: right)
// reads across the edge: i mod row_edges is 0 for the left tap, row_edges - 1 for the
// right one. tap_columns must be a multiple of 16, and N = 3 * tap_columns.
void sgemm_packed_a(const SgemmPackedA& a, bool trans_b, int64_t N, float alpha, const float* B, int64_t ldb,
                    const int64_t* b_rows, float beta, float* C, int64_t ldc, const SgemmPrefetch& prefetch = {},
                    int64_t row_edges = 0, int64_t tap_columns = 0);
// Whether sgemm_packed_a takes row edges with `isa`, and on a row length of `row_length`
// and N columns; with tap_columns, on taps along the columns.
bool sgemm_row_edges_supported(SgemmIsa isa, int64_t row_length, int64_t N, int64_t tap_columns = 0);
// The instruction set of a packed A.
SgemmIsa packed_isa(const SgemmPackedA& a);

// dst (cols x rows, rows ld_dst apart) = src^T, src being rows x cols with rows ld_src
// apart: in blocks of 8 x 8 through vector registers where the CPU has AVX2.
void transpose(int64_t rows, int64_t cols, const float* src, int64_t ld_src, float* dst, int64_t ld_dst);

}  // namespace polyak::cpu
