#include "engine/linalg.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace polyak::linalg {

namespace {

// LAPACK's symmetric eigensolver; the trailing lengths are the Fortran calling
// convention's hidden string lengths.
using Dsyev = void (*)(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
                       double* work, const int* lwork, int* info, size_t jobz_len, size_t uplo_len);

Dsyev load_dsyev() {
  setenv("OPENBLAS_NUM_THREADS", "1", /*overwrite=*/0);
  std::string errors;
  for (const char* file : {"liblapack.so.3", "liblapack.so"}) {
    if (void* handle = dlopen(file, RTLD_NOW | RTLD_LOCAL)) {  // kept open for the life of the process
      if (auto* dsyev = reinterpret_cast<Dsyev>(dlsym(handle, "dsyev_"))) return dsyev;
      errors += std::string(file) + " has no dsyev_; ";
    } else {
      errors += std::string(dlerror()) + "; ";
    }
  }
  throw std::runtime_error("LAPACK: cannot load it (" + errors + "install liblapack3 or libopenblas0)");
}

}  // namespace

SymmetricEigen symmetric_eigen(const std::vector<double>& a, int n) {
  if (n < 1 || a.size() != static_cast<size_t>(n) * static_cast<size_t>(n))
    throw std::invalid_argument("symmetric_eigen: " + std::to_string(a.size()) + " values for an " + std::to_string(n) +
                                " x " + std::to_string(n) + " matrix");
  static const Dsyev dsyev = load_dsyev();
  // Row-major upper triangle = column-major lower triangle: ask for "L". On return the
  // columns of the column-major matrix, i.e. our rows, are the eigenvectors.
  SymmetricEigen result{std::vector<double>(static_cast<size_t>(n)), a};
  int lwork = -1, info = 0;
  double query = 0;
  dsyev("V", "L", &n, result.vectors.data(), &n, result.values.data(), &query, &lwork, &info, 1, 1);
  lwork = std::max(1, static_cast<int>(query));
  std::vector<double> work(static_cast<size_t>(lwork));
  dsyev("V", "L", &n, result.vectors.data(), &n, result.values.data(), work.data(), &lwork, &info, 1, 1);
  if (info != 0) throw std::runtime_error("LAPACK dsyev failed (info " + std::to_string(info) + ")");
  return result;
}

}  // namespace polyak::linalg
