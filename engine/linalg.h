// Dense linear algebra the engine does not compute itself: the eigen-decomposition of a
// small symmetric matrix (a whitening layer's patch covariance, phema's Gram matrix),
// by LAPACK's dsyev. LAPACK is loaded on first use (liblapack.so.3: OpenBLAS's on
// Debian, else the reference one), not linked: OpenBLAS starts a thread pool when it is
// loaded, whose spinning threads slow the engine's own (docs/PERFORMANCE.md, "No BLAS
// in the engine"), so it is loaded with OPENBLAS_NUM_THREADS=1 unless the user set it,
// and only by the runs that need it.
#pragma once

#include <vector>

namespace polyak::linalg {

struct SymmetricEigen {
  std::vector<double> values;   // ascending
  std::vector<double> vectors;  // n x n, row i the unit eigenvector of values[i]
};

// The eigenvalues and eigenvectors of the symmetric n x n matrix `a` (n * n values;
// only its upper triangle is read). Throws std::runtime_error when LAPACK cannot be
// loaded or does not converge, std::invalid_argument for a size that does not match.
SymmetricEigen symmetric_eigen(const std::vector<double>& a, int n);

}  // namespace polyak::linalg
