// The whitening convolution's filters: on tiny images whose patch moments are known by
// hand, and the whitening property on random images.
#include <doctest/doctest.h>

#include <cmath>

#include "engine/rng.h"
#include "models/whitening.h"

using namespace polyak;

TEST_CASE("whitening: a 1 x 1 patch of one channel: the filters are +-1 / sqrt(mean x^2 + eps)") {
  const Tensor image = Tensor::from_vector({1, 2, 3, 4}, {1, 1, 2, 2});  // mean of squares 7.5
  const std::vector<float> w = models::whitening_filters(image, 1, 0.5).to_vector<float>();
  REQUIRE(w.size() == 2);
  CHECK(std::fabs(w[0]) == doctest::Approx(1.0 / std::sqrt(8.0)));
  CHECK(w[1] == -w[0]);
}

TEST_CASE("whitening: one 2 x 2 patch p: the first filter is +-p / (|p| sqrt(|p|^2 + eps)), its negative follows") {
  const Tensor image = Tensor::from_vector({1, 2, 3, 4}, {1, 1, 2, 2});  // S = p p^T, |p|^2 = 30
  const Tensor filters = models::whitening_filters(image, 2, 0.0);
  CHECK(filters.shape() == Shape{8, 1, 2, 2});
  const std::vector<float> w = filters.to_vector<float>();
  const double sign = w[0] > 0 ? 1.0 : -1.0, scale = 1.0 / (std::sqrt(30.0) * std::sqrt(30.0));
  for (int j = 0; j < 4; ++j) {
    CHECK(w[static_cast<size_t>(j)] == doctest::Approx(sign * (j + 1) * scale).epsilon(1e-5));
    CHECK(w[static_cast<size_t>(16 + j)] == -w[static_cast<size_t>(j)]);  // filter 4 = -filter 0
  }
}

TEST_CASE("whitening: on correlated random images the filters decorrelate the patches (W S W^T = I)") {
  // Three channels that share most of their signal, and neighbouring pixels that do too.
  Rng rng(5);
  const int64_t N = 20, H = 9, W = 9;
  std::vector<float> x(static_cast<size_t>(N * 3 * H * W));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j) {
        const float shared = rng.normal();
        for (int64_t c = 0; c < 3; ++c)
          x[static_cast<size_t>(((n * 3 + c) * H + i) * W + j)] = shared + 0.3f * rng.normal() + 0.1f * static_cast<float>(c);
      }
  const Tensor images = Tensor::from_vector(x, {N, 3, H, W});
  const std::vector<float> w = models::whitening_filters(images, 2, 1e-9).to_vector<float>();
  // The patches' second moments, and W S W^T for the 12 positive filters.
  const int64_t d = 12;
  std::vector<double> s(static_cast<size_t>(d * d), 0.0);
  int64_t count = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i + 1 < H; ++i)
      for (int64_t j = 0; j + 1 < W; ++j, ++count) {
        double p[12];
        int at = 0;
        for (int64_t c = 0; c < 3; ++c)
          for (int64_t dy = 0; dy < 2; ++dy)
            for (int64_t dx = 0; dx < 2; ++dx) p[at++] = x[static_cast<size_t>(((n * 3 + c) * H + i + dy) * W + j + dx)];
        for (int a = 0; a < d; ++a)
          for (int b = 0; b < d; ++b) s[static_cast<size_t>(a * d + b)] += p[a] * p[b];
      }
  for (double& v : s) v /= static_cast<double>(count);
  for (int f = 0; f < d; ++f)
    for (int g = 0; g < d; ++g) {
      double m = 0;
      for (int a = 0; a < d; ++a)
        for (int b = 0; b < d; ++b) m += w[static_cast<size_t>(f * d + a)] * s[static_cast<size_t>(a * d + b)] * w[static_cast<size_t>(g * d + b)];
      CAPTURE(f);
      CAPTURE(g);
      CHECK(m == doctest::Approx(f == g ? 1.0 : 0.0).epsilon(1e-4).scale(1));
    }
}
