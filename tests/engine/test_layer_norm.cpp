// LayerNorm, composed of existing ops: values against the definition, gradient check of
// input, weight and bias, and the nn.LayerNorm layer's PyTorch parameter names.
#include <doctest/doctest.h>

#include <cmath>
#include <stdexcept>

#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;
using polyak::testing::gradcheck;

TEST_CASE("layer_norm: each row normalised over its last dims, then scaled and shifted") {
  const Tensor x = Tensor::from_vector({1, 2, 3, 4, 10, 10, 10, 14}, {2, 4});
  // Row 0: mean 2.5, biased variance 1.25. Row 1: mean 11, variance 3.
  const float s0 = 1.0f / std::sqrt(1.25f + 1e-5f), s1 = 1.0f / std::sqrt(3.0f + 1e-5f);
  check_close(layer_norm(x, 1), std::vector<float>{-1.5f * s0, -0.5f * s0, 0.5f * s0, 1.5f * s0, -s1, -s1, -s1, 3 * s1},
              1e-6, 1e-5);
  const Tensor w = Tensor::from_vector({1, 2, 3, 4}, {4}), b = Tensor::from_vector({0, 0, 0, 1}, {4});
  check_close(layer_norm(x, 1, w, b), std::vector<float>{-1.5f * s0, -1.0f * s0, 1.5f * s0, 6.0f * s0 + 1, -s1,
                                                         -2 * s1, -3 * s1, 12 * s1 + 1},
              1e-6, 1e-5);
  CHECK_THROWS_AS(layer_norm(x, 3), std::invalid_argument);
  CHECK_THROWS_AS(layer_norm(x, 1, Tensor::ones({3})), std::invalid_argument);
}

TEST_CASE("layer_norm: gradient check over two normalised dims, with weight and bias") {
  Rng rng(31);
  const Tensor x = Tensor::normal({3, 4, 5}, 0, 1, rng).requires_grad_();
  const Tensor w = Tensor::normal({4, 5}, 1, 0.5f, rng).requires_grad_();
  const Tensor b = Tensor::normal({4, 5}, 0, 0.5f, rng).requires_grad_();
  gradcheck([](const std::vector<Tensor>& t) { return layer_norm(t[0], 2, t[1], t[2]); }, {x, w, b});
}

TEST_CASE("nn.LayerNorm: PyTorch's parameter names and initial values") {
  nn::LayerNorm layer({4, 5});
  const auto params = layer.named_parameters();
  REQUIRE(params.size() == 2);
  CHECK(params[0].first == "weight");
  CHECK(params[1].first == "bias");
  Rng rng(32);
  const Tensor x = Tensor::normal({2, 4, 5}, 3, 2, rng);
  check_close(layer.forward(x), layer_norm(x, 2), 0, 0);
}
