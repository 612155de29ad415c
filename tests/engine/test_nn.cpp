// Modules: names, modes, state dicts, and the flat parameter/gradient/buffer arenas.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;

namespace {
// conv -> bn -> relu -> pool -> flatten -> linear, as a Sequential.
std::shared_ptr<nn::Sequential> small_net(Rng& rng) {
  auto net = std::make_shared<nn::Sequential>();
  net->add(std::make_shared<nn::Conv2d>(3, 4, 3, rng, 1, 1, false));
  net->add(std::make_shared<nn::BatchNorm2d>(4));
  net->add(std::make_shared<nn::ReLU>());
  net->add(std::make_shared<nn::GlobalAvgPool2d>());
  net->add(std::make_shared<nn::Linear>(4, 3, rng));
  return net;
}
}  // namespace

TEST_CASE("nn: names, order and modes follow torch.nn") {
  Rng rng(0);
  const auto net = small_net(rng);
  std::vector<std::string> names;
  for (const auto& [name, t] : net->state_dict()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                          "1.num_batches_tracked", "4.weight", "4.bias"});
  CHECK(net->named_parameters().size() == 5);
  CHECK(net->named_buffers().size() == 3);
  CHECK(net->is_training());
  net->eval();
  for (auto& [name, m] : net->named_modules()) CHECK(!m->is_training());
  net->train();
  for (auto& [name, m] : net->named_modules()) CHECK(m->is_training());
}

TEST_CASE("nn: default initialisations are PyTorch's") {
  Rng rng(1);
  nn::Conv2d conv(8, 16, 3, rng);
  const float bound = 1.0f / std::sqrt(8.0f * 9.0f);
  for (float v : conv.weight.to_vector<float>()) CHECK(std::abs(v) <= bound);
  for (float v : conv.bias.to_vector<float>()) CHECK(std::abs(v) <= bound);
  nn::Linear fc(100, 10, rng);
  for (float v : fc.weight.to_vector<float>()) CHECK(std::abs(v) <= 0.1f);
  nn::BatchNorm2d bn(5);
  check_close(bn.weight, std::vector<float>(5, 1.0f));
  check_close(bn.bias, std::vector<float>(5, 0.0f));
  check_close(bn.running_var, std::vector<float>(5, 1.0f));
  CHECK(bn.num_batches_tracked.item<int64_t>() == 0);
}

TEST_CASE("nn: arenas hold every parameter, gradient and float buffer in one allocation") {
  Rng rng(2);
  const auto net = small_net(rng);
  std::vector<std::vector<float>> before;
  for (const Tensor& p : net->parameters()) before.push_back(p.to_vector<float>());
  net->pack_arenas();
  const Tensor& arena = net->parameter_arena();
  CHECK(arena.numel() == 4 * 3 * 9 + 4 + 4 + 3 * 4 + 3);
  int64_t offset = 0;
  const std::vector<Tensor> params = net->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    CHECK(params[i].storage() == arena.storage());
    CHECK(params[i].offset() == offset);
    CHECK(params[i].to_vector<float>() == before[i]);  // values moved intact
    CHECK(params[i].grad().storage() == net->gradient_arena().storage());
    offset += params[i].numel();
  }
  CHECK(net->buffer_arena().numel() == 8);  // running mean and var; the int64 counter stays apart

  // Backward accumulates into the gradient arena; zero_grad clears it in one pass.
  const Tensor x = Tensor::normal({2, 3, 5, 5}, 0, 1, rng);
  sum((*net)(x)).backward();
  const std::vector<float> g = net->gradient_arena().to_vector<float>();
  CHECK(std::any_of(g.begin(), g.end(), [](float v) { return v != 0.0f; }));
  net->zero_grad();
  const std::vector<float> z = net->gradient_arena().to_vector<float>();
  CHECK(std::all_of(z.begin(), z.end(), [](float v) { return v == 0.0f; }));

  // Writing the arena writes the parameters.
  Tensor(arena).fill_(0.5f);
  check_close(params[0], std::vector<float>(params[0].numel(), 0.5f));
  CHECK_THROWS_AS(net->pack_arenas(), std::logic_error);
}

TEST_CASE("nn: swapping arena storage exchanges all weights in O(1) and swaps back exactly") {
  Rng rng(3);
  const auto net = small_net(rng);
  net->pack_arenas();
  const std::vector<float> live = net->parameter_arena().to_vector<float>();
  const Tensor other = Tensor::full(net->parameter_arena().shape(), 2.0f);
  const Tensor x = Tensor::normal({2, 3, 5, 5}, 0, 1, rng);
  net->eval();
  const std::vector<float> y_live = (*net)(x).to_vector<float>();
  nn::swap_storage_data(net->parameter_arena(), other);
  check_close(net->parameters()[0], std::vector<float>(4 * 3 * 9, 2.0f));
  CHECK((*net)(x).to_vector<float>() != y_live);
  nn::swap_storage_data(net->parameter_arena(), other);
  CHECK(net->parameter_arena().to_vector<float>() == live);
  CHECK((*net)(x).to_vector<float>() == y_live);
}

TEST_CASE("nn: load_state_dict copies in place and names what does not fit") {
  Rng a(4), b(5);
  const auto src = small_net(a), dst = small_net(b);
  dst->pack_arenas();
  dst->load_state_dict(src->state_dict());
  const auto s = src->state_dict(), d = dst->state_dict();
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i].second.dtype() == DType::F32) CHECK(s[i].second.to_vector<float>() == d[i].second.to_vector<float>());
  CHECK(dst->parameters()[0].storage() == dst->parameter_arena().storage());  // still arena views

  auto missing = src->state_dict();
  missing.pop_back();
  CHECK_THROWS_WITH_AS(dst->load_state_dict(missing), doctest::Contains("missing '4.bias'"), std::invalid_argument);
  auto wrong = src->state_dict();
  wrong[0].second = Tensor::zeros({4, 3, 5, 5});
  CHECK_THROWS_WITH_AS(dst->load_state_dict(wrong), doctest::Contains("'0.weight'"), std::invalid_argument);
  auto extra = src->state_dict();
  extra.emplace_back("fc.weight", Tensor::zeros({1}));
  CHECK_THROWS_WITH_AS(dst->load_state_dict(extra), doctest::Contains("'fc.weight'"), std::invalid_argument);
}

TEST_CASE("nn: conv_bn folds an evaluation-mode BatchNorm into the convolution") {
  Rng rng(3);
  for (const bool conv_bias : {false, true})
    for (const bool affine : {true, false})
      for (const int64_t stride : {1, 2}) {
        CAPTURE(conv_bias);
        CAPTURE(affine);
        CAPTURE(stride);
        nn::Conv2d conv(3, 5, 3, rng, stride, 1, conv_bias);
        nn::BatchNorm2d bn(5, 1e-3f, 0.1f, affine);
        bn.running_mean.copy_(Tensor::normal({5}, 0.0f, 1.0f, rng));
        bn.running_var.copy_(Tensor::uniform({5}, 0.5f, 2.0f, rng));
        if (affine) {
          bn.weight.detach().copy_(Tensor::uniform({5}, 0.5f, 1.5f, rng));
          bn.bias.detach().copy_(Tensor::normal({5}, 0.0f, 1.0f, rng));
        }
        const Tensor x = Tensor::normal({2, 3, 7, 6}, 0.0f, 1.0f, rng);

        // Training mode: the two steps as written, batch statistics and all.
        // (Where the convolution computes its output planes' moments, the BatchNorm's
        // statistics come from those.)
        const Tensor running_before = bn.running_mean.clone(), running_var_before = bn.running_var.clone();
        (void)nn::conv_bn(conv, bn, x);
        const Tensor z = conv.forward(x);
        const Tensor z_mean = mean(z, {0, 2, 3}, true);
        const float values_per_channel = static_cast<float>(z.numel() / z.size(1));
        const Tensor z_var = mean((z - z_mean) * (z - z_mean), {0, 2, 3}) * (values_per_channel / (values_per_channel - 1));
        check_close(bn.running_mean, running_before * 0.9f + z_mean.reshape({5}) * 0.1f);
        check_close(bn.running_var, running_var_before * 0.9f + z_var * 0.1f, 1e-5, 1e-5);
        bn.running_mean.copy_(running_before);
        bn.running_var.copy_(running_var_before);

        // Evaluation mode: one convolution, equal to the two steps up to rounding, and
        // the gradients reach the same parameters with the same values.
        bn.eval();
        const Tensor separate = bn.forward(conv.forward(x));
        const Tensor folded = nn::conv_bn(conv, bn, x);
        check_close(folded, separate, 1e-5, 1e-5);
        sum(separate * separate).backward();
        const Tensor conv_grad = conv.weight.grad().clone();
        const Tensor bn_grad = affine ? bn.weight.grad().clone() : Tensor();
        conv.weight.set_grad({});
        if (affine) bn.weight.set_grad({});
        sum(folded * folded).backward();
        check_close(conv.weight.grad(), conv_grad, 1e-4, 1e-4);
        if (affine) check_close(bn.weight.grad(), bn_grad, 1e-4, 1e-4);
        bn.train();
      }
  // The epilogue, relu(bn(conv(x)) + residual): fused into the BatchNorm in training,
  // after the folded convolution in evaluation; both equal to the separate steps.
  for (const bool training : {true, false}) {
    CAPTURE(training);
    nn::Conv2d conv(3, 4, 3, rng, 1, 1);
    nn::BatchNorm2d bn(4);
    bn.running_var.copy_(Tensor::uniform({4}, 0.5f, 2.0f, rng));
    const Tensor x = Tensor::normal({2, 3, 5, 5}, 0.0f, 1.0f, rng);
    const Tensor residual = Tensor::normal({2, 4, 5, 5}, 0.0f, 1.0f, rng);
    if (!training) bn.eval();
    const Tensor running_before = bn.running_mean.clone();
    const Tensor fused = nn::conv_bn(conv, bn, x, {.residual = residual, .relu = true});
    bn.running_mean.copy_(running_before);
    const Tensor separate = relu(bn.forward(conv.forward(x)) + residual);
    check_close(fused, separate, 1e-5, 1e-5);
    const std::vector<float> values = fused.to_vector<float>();
    CHECK(std::count(values.begin(), values.end(), 0.0f) > 0);  // the ReLU cut something
  }
  // A BatchNorm of the wrong width is named, not silently broadcast.
  nn::Conv2d conv(3, 4, 1, rng);
  nn::BatchNorm2d bn(6);
  bn.eval();
  CHECK_THROWS_WITH_AS(nn::conv_bn(conv, bn, Tensor::ones({1, 3, 2, 2})),
                       "conv_bn: a convolution with 4 filters feeds a BatchNorm of 6 channels", std::invalid_argument);
}
