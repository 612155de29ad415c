// The symmetric eigensolver (LAPACK through engine/linalg.h) on matrices with known
// decompositions.
#include <doctest/doctest.h>

#include <cmath>
#include <stdexcept>

#include "engine/linalg.h"

using namespace polyak;

TEST_CASE("linalg: symmetric_eigen gives ascending eigenvalues and orthonormal eigenvectors A v = l v") {
  // [[2, 1, 0], [1, 2, 0], [0, 0, 5]]: eigenvalues 1, 3, 5.
  const std::vector<double> a = {2, 1, 0, 1, 2, 0, 0, 0, 5};
  const linalg::SymmetricEigen e = linalg::symmetric_eigen(a, 3);
  REQUIRE(e.values.size() == 3);
  CHECK(e.values[0] == doctest::Approx(1.0).epsilon(1e-12));
  CHECK(e.values[1] == doctest::Approx(3.0).epsilon(1e-12));
  CHECK(e.values[2] == doctest::Approx(5.0).epsilon(1e-12));
  for (int i = 0; i < 3; ++i) {
    const double* v = e.vectors.data() + 3 * i;
    for (int r = 0; r < 3; ++r) {
      double av = 0;
      for (int c = 0; c < 3; ++c) av += a[static_cast<size_t>(3 * r + c)] * v[c];
      CHECK(av == doctest::Approx(e.values[static_cast<size_t>(i)] * v[r]).epsilon(1e-12).scale(1));
    }
    for (int j = 0; j < 3; ++j) {
      double dot = 0;
      for (int r = 0; r < 3; ++r) dot += v[r] * e.vectors[static_cast<size_t>(3 * j + r)];
      CHECK(dot == doctest::Approx(i == j ? 1.0 : 0.0).epsilon(1e-12).scale(1));
    }
  }
  CHECK(std::fabs(e.vectors[6 + 2]) == doctest::Approx(1.0));  // eigenvalue 5: the third axis
  CHECK_THROWS_AS(linalg::symmetric_eigen(a, 2), std::invalid_argument);
}
