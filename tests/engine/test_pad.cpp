// Zero padding and strided slicing: values, gradient checks, device parity.
#include <doctest/doctest.h>

#include "engine/ops.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;
using polyak::testing::for_each_accelerator;
using polyak::testing::gradcheck;

TEST_CASE("pad: zeros around the data, per dim") {
  const Tensor x = Tensor::from_vector({1, 2, 3, 4}, {2, 2});
  const Tensor y = pad(x, {{1, 0}, {0, 2}});
  CHECK(y.shape() == Shape{3, 4});
  check_close(y, std::vector<float>{0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0, 0});
  CHECK_THROWS_AS(pad(x, {{0, 0}, {0, 0}, {1, 1}}), std::invalid_argument);
  CHECK_THROWS_AS(pad(x, {{-1, 0}}), std::invalid_argument);
}

TEST_CASE("slice: every step-th element along a dim, as x[:, :, ::2, ::2]") {
  const Tensor x = Tensor::from_vector({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, {1, 1, 4, 4});
  const Tensor y = x.slice(2, 0, 4, 2).slice(3, 0, 4, 2);
  CHECK(y.shape() == Shape{1, 1, 2, 2});
  check_close(y, std::vector<float>{0, 2, 8, 10});
  check_close(x.slice(3, 1, 4, 2), std::vector<float>{1, 3, 5, 7, 9, 11, 13, 15});
  CHECK(x.slice(2, 1, 4, 2).shape() == Shape{1, 1, 2, 4});
  CHECK_THROWS_AS(x.slice(2, 0, 5, 1), std::out_of_range);
  CHECK_THROWS_AS(x.slice(2, 0, 4, 0), std::out_of_range);
}

TEST_CASE("pad and strided slice: gradient checks (the ResNet option-A shortcut)") {
  Rng rng(12);
  auto x = Tensor::normal({2, 4, 6, 6}, 0, 1, rng).requires_grad_();
  gradcheck([](const std::vector<Tensor>& t) { return pad(t[0], {{0, 0}, {2, 2}}); }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return t[0].slice(2, 0, 6, 2).slice(3, 1, 6, 2); }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return pad(t[0].slice(2, 0, 6, 2).slice(3, 0, 6, 2), {{0, 0}, {2, 2}}); },
            {x});
}

TEST_CASE("pad and strided slice: CPU vs accelerator parity") {
  for_each_accelerator([](Device device) {
    Rng rng(13);
    const Tensor x = Tensor::normal({3, 4, 5, 5}, 0, 1, rng);
    const auto f = [](const Tensor& t) { return pad(t.slice(2, 0, 5, 2).slice(3, 0, 5, 2), {{0, 0}, {2, 2}, {1, 0}}); };
    check_close(f(x.to(device)).to(Device::CPU), f(x), 0, 0);
  });
}

TEST_CASE("pad and strided slice: gradient checks on the accelerator") {
  for_each_accelerator([](Device device) {
    Rng rng(14);
    auto x = Tensor::normal({2, 4, 6, 6}, 0, 1, rng).to(device).requires_grad_();
    gradcheck([](const std::vector<Tensor>& t) { return pad(t[0].slice(2, 0, 6, 2).slice(3, 0, 6, 2), {{0, 0}, {2, 2}}); },
              {x});
  });
}
