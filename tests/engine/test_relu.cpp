// ReLU: values, gradient check, device parity.
#include <doctest/doctest.h>

#include "engine/ops.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;
using polyak::testing::for_each_accelerator;
using polyak::testing::gradcheck;

TEST_CASE("relu: values and the zero subgradient at 0") {
  Tensor x = Tensor::from_vector({-2, -0.5f, 0, 0.5f, 3}, {5}).requires_grad_();
  const Tensor y = relu(x);
  check_close(y, std::vector<float>{0, 0, 0, 0.5f, 3});
  sum(y).backward();
  check_close(x.grad(), std::vector<float>{0, 0, 0, 1, 1});
}

TEST_CASE("relu: gradient check away from the kink") {
  Rng rng(9);
  std::vector<float> values(60);
  for (size_t i = 0; i < values.size(); ++i) values[i] = (rng.uniform() < 0.5f ? -1.0f : 1.0f) * rng.uniform(0.1f, 2.0f);
  auto x = Tensor::from_vector(values, {3, 4, 5}).requires_grad_();
  gradcheck([](const std::vector<Tensor>& t) { return relu(t[0]); }, {x});
}

TEST_CASE("relu: CPU vs accelerator parity") {
  for_each_accelerator([](Device device) {
    Rng rng(10);
    Tensor x = Tensor::normal({4, 8, 5, 5}, 0, 1, rng).requires_grad_();
    Tensor dx = x.detach().to(device).requires_grad_();
    const Tensor y = relu(x), dy = relu(dx);
    check_close(dy.to(Device::CPU), y, 0, 0);
    sum(y * y).backward();
    sum(dy * dy).backward();
    check_close(dx.grad().to(Device::CPU), x.grad(), 1e-6, 1e-6);
  });
}

TEST_CASE("relu: gradient check on the accelerator") {
  for_each_accelerator([](Device device) {
    Rng rng(11);
    std::vector<float> values(60);
    for (float& v : values) v = (rng.uniform() < 0.5f ? -1.0f : 1.0f) * rng.uniform(0.1f, 2.0f);
    auto x = Tensor::from_vector(values, {3, 4, 5}, device).requires_grad_();
    gradcheck([](const std::vector<Tensor>& t) { return relu(t[0]); }, {x});
  });
}
