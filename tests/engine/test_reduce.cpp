// Sum and mean: values, gradient checks, device parity.
#include <doctest/doctest.h>

#include "engine/ops.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;
using polyak::testing::for_each_accelerator;
using polyak::testing::gradcheck;

TEST_CASE("reduce: sum and mean over all and along dims") {
  const Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(sum(x).dim() == 0);
  CHECK(sum(x).item() == 21.0f);
  CHECK(mean(x).item() == 3.5f);
  check_close(sum(x, {0}), std::vector<float>{5, 7, 9});
  check_close(sum(x, {1}), std::vector<float>{6, 15});
  check_close(mean(x, {-1}, true), std::vector<float>{2, 5});
  CHECK(mean(x, {-1}, true).shape() == Shape{2, 1});
  // Per-channel sums over (N,H,W) of an NCHW tensor, as a bias gradient needs.
  const Tensor t = Tensor::ones({2, 3, 2, 2}) * Tensor::from_vector({1, 2, 3}, {1, 3, 1, 1});
  check_close(sum(t, {0, 2, 3}), std::vector<float>{8, 16, 24});
  CHECK_THROWS_AS(sum(x, {2}), std::out_of_range);
}

TEST_CASE("reduce: long sums keep float accuracy") {
  const Tensor x = Tensor::full({1 << 22}, 0.1f);
  CHECK(sum(x).item() == doctest::Approx(0.1 * (1 << 22)).epsilon(1e-6));
}

TEST_CASE("reduce: gradient checks") {
  Rng rng(4);
  auto x = Tensor::normal({2, 3, 4, 5}, 0, 1, rng).requires_grad_();
  gradcheck([](const std::vector<Tensor>& t) { return sum(t[0]); }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return mean(t[0]); }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return sum(t[0], {0, 2, 3}); }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return mean(t[0], {1}, true); }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return sum(t[0], {3}); }, {x});
}

TEST_CASE("reduce: CPU vs accelerator parity") {
  for_each_accelerator([](Device device) {
    Rng rng(5);
    const Tensor x = Tensor::normal({8, 16, 6, 6}, 0, 1, rng);
    const Tensor dx = x.to(device);
    check_close(sum(dx).to(Device::CPU), sum(x), 1e-3, 1e-5);
    check_close(sum(dx, {0, 2, 3}).to(Device::CPU), sum(x, {0, 2, 3}), 1e-4, 1e-5);
    check_close(mean(dx, {1}).to(Device::CPU), mean(x, {1}), 1e-5, 1e-5);
    check_close(sum(dx, {3}, true).to(Device::CPU), sum(x, {3}, true), 1e-5, 1e-5);
  });
}

TEST_CASE("reduce: every dim pattern on the accelerator, long sums, and the same bits twice") {
  for_each_accelerator([](Device device) {
    Rng rng(16);
    // Large enough that the GPU splits each sum into segments (the two-pass path).
    const Tensor x = Tensor::normal({64, 32, 16, 16}, 0, 1, rng);
    const Tensor dx = x.to(device);
    const std::vector<std::vector<int64_t>> patterns = {{0}, {1}, {2}, {3}, {0, 1}, {0, 2, 3}, {1, 3}, {0, 1, 2, 3}, {2, 3}};
    for (const auto& dims : patterns) {
      CAPTURE(shape_str(dims));
      const Tensor expected = sum(x, dims);
      const Tensor got = sum(dx, dims);
      check_close(got.to(Device::CPU), expected, 1e-3, 1e-5);
      CHECK(got.to_vector<float>() == sum(dx, dims).to_vector<float>());  // deterministic
    }
    // (N, F) summed over N: the bias gradient of a linear layer (a kept inner dim).
    const Tensor wide = Tensor::normal({1000, 37}, 0, 1, rng);
    check_close(sum(wide.to(device), {0}).to(Device::CPU), sum(wide, {0}), 1e-4, 1e-5);
    const Tensor tenths = Tensor::full({1 << 22}, 0.1f, device);
    CHECK(sum(tenths).item() == doctest::Approx(0.1 * (1 << 22)).epsilon(1e-6));
  });
}

TEST_CASE("reduce: gradient checks on the accelerator") {
  for_each_accelerator([](Device device) {
    Rng rng(17);
    auto x = Tensor::normal({2, 3, 4, 5}, 0, 1, rng).to(device).requires_grad_();
    gradcheck([](const std::vector<Tensor>& t) { return sum(t[0]); }, {x});
    gradcheck([](const std::vector<Tensor>& t) { return mean(t[0], {0, 2, 3}); }, {x});
    gradcheck([](const std::vector<Tensor>& t) { return sum(t[0], {1}, true); }, {x});
  });
}
