// Matrix products through our sgemm (engine/cpu/sgemm.h), which runs on one thread; a
// product called from outside our parallel regions is split by rows of C across the team.
#include <omp.h>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/sgemm.h"
#include "engine/parallel.h"

namespace polyak {

void cpu::gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                      int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const auto product = [&](int64_t row_begin, int64_t row_end) {
    // Rows [row_begin, row_end) of op(A) start at row_begin (no transpose) or at
    // column row_begin (transpose) of A.
    const float* a = trans_a ? A + row_begin : A + row_begin * lda;
    cpu::sgemm(trans_a, trans_b, row_end - row_begin, N, K, alpha, a, lda, B, ldb, beta, C + row_begin * ldc, ldc);
  };
  if (M == 0 || N == 0) return;
  if (omp_in_parallel()) {
    product(0, M);
  } else {
    parallel_for(M, N * K, product);
  }
}

}  // namespace polyak
