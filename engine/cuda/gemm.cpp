// Matrix products through cuBLAS (the CPU file: engine/cpu/gemm.cpp).
//
// cuBLAS is column-major; our matrices are row-major. A row-major M x N matrix with
// leading dimension ld is, byte for byte, its N x M transpose in column-major order
// with the same ld. So row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T,
// one cuBLAS call with the operands swapped (B first) and M, N swapped; the transpose
// flags stay as they are.
//
// Precision: FP32 products with FP32 accumulation (CUBLAS_COMPUTE_32F) unless TF32 is
// switched on (set_cuda_tf32), which allows tensor cores with TF32 inputs. Results are
// bitwise reproducible run to run on one GPU model (cuBLAS's guarantee on one stream).
#include <limits>
#include <stdexcept>
#include <string>

#include "engine/cuda/libraries.h"

namespace polyak {

namespace {

int checked_int(int64_t v, const char* what) {
  if (v < 0 || v > std::numeric_limits<int>::max())
    throw std::invalid_argument(std::string("gemm: ") + what + " = " + std::to_string(v) + " does not fit cuBLAS");
  return static_cast<int>(v);
}

}  // namespace

void CudaBackend::gemm_strided_batched(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                                       const float* A, int64_t lda, int64_t stride_a, const float* B, int64_t ldb,
                                       int64_t stride_b, float beta, float* C, int64_t ldc, int64_t stride_c,
                                       int64_t batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) {  // C = beta * C (cuBLAS handles k = 0 the same way, but be explicit)
    if (beta == 0.0f && ldc == N && (batch == 1 || stride_c == M * N)) {
      fill(C, M * N * batch, 0.0f);
      return;
    }
  }
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasComputeType_t compute = cuda_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  // lda etc. must be at least 1 for cuBLAS even when a dimension is 0.
  const int m = checked_int(N, "N"), n = checked_int(M, "M"), k = checked_int(K, "K");
  const int ld_b = checked_int(std::max<int64_t>(ldb, 1), "ldb"), ld_a = checked_int(std::max<int64_t>(lda, 1), "lda"),
            ld_c = checked_int(std::max<int64_t>(ldc, 1), "ldc");
  const CublasLibrary& library = cublas_library();
  if (batch == 1) {
    POLYAK_CUBLAS(library.gemm_ex(cublas(), op_b, op_a, m, n, k, &alpha, B, CUDA_R_32F, ld_b, A, CUDA_R_32F, ld_a, &beta,
                                  C, CUDA_R_32F, ld_c, compute, CUBLAS_GEMM_DEFAULT));
  } else {
    POLYAK_CUBLAS(library.gemm_strided_batched_ex(cublas(), op_b, op_a, m, n, k, &alpha, B, CUDA_R_32F, ld_b, stride_b,
                                                  A, CUDA_R_32F, ld_a, stride_a, &beta, C, CUDA_R_32F, ld_c, stride_c,
                                                  checked_int(batch, "batch"), compute, CUBLAS_GEMM_DEFAULT));
  }
}

void CudaBackend::gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                       int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_strided_batched(trans_a, trans_b, M, N, K, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

}  // namespace polyak
