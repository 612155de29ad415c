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

#include <cstdint>

namespace polyak::cpu {

enum class SgemmIsa { Scalar, Avx2, Avx512 };

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The instruction set sgemm uses: "avx512", "avx2" or "scalar".
const char* sgemm_isa();

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

// The definition as a plain triple loop (sums in double), the reference of the tests.
void sgemm_reference(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                     int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace polyak::cpu
