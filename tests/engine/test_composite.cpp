// Gradients through a whole small network: conv -> BN -> relu -> pool -> linear -> CE,
// checked by finite differences with respect to the input and every parameter.
#include <doctest/doctest.h>

#include "engine/ops.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::gradcheck;

TEST_CASE("composite: conv -> batchnorm -> relu -> pools -> linear -> cross-entropy") {
  Rng rng(11);
  auto x = Tensor::normal({3, 2, 6, 6}, 0, 1, rng).requires_grad_();
  auto conv_w = Tensor::normal({4, 2, 3, 3}, 0, 0.5f, rng).requires_grad_();
  auto conv_b = Tensor::normal({4}, 0, 0.1f, rng).requires_grad_();
  auto gamma = Tensor::uniform({4}, 0.5f, 1.5f, rng).requires_grad_();
  auto beta = Tensor::normal({4}, 0, 0.1f, rng).requires_grad_();
  auto fc_w = Tensor::normal({5, 4}, 0, 0.5f, rng).requires_grad_();
  auto fc_b = Tensor::normal({5}, 0, 0.1f, rng).requires_grad_();
  const int64_t label_values[3] = {0, 3, 4};
  const Tensor labels = Tensor::from_data(label_values, {3});
  const Tensor running_mean = Tensor::zeros({4}), running_var = Tensor::ones({4});

  const auto net = [&](const std::vector<Tensor>& t) {
    Tensor h = conv2d(t[0], t[1], t[2], {.stride = 1, .padding = 1});
    h = relu(batch_norm(h, t[3], t[4], running_mean, running_var, {}, {.training = true}));
    h = max_pool2d(h, {.kernel = 2});
    h = global_avg_pool2d(avg_pool2d(h, {.kernel = 3, .stride = 1, .padding = 1}));
    return cross_entropy(linear(h, t[5], t[6]), labels, 0.1f);
  };
  // Max pooling and ReLU have kinks; a small step keeps the differences on one side.
  gradcheck(net, {x, conv_w, conv_b, gamma, beta, fc_w, fc_b}, {.eps = 2e-3f, .atol = 2e-3, .rtol = 3e-2});
}
