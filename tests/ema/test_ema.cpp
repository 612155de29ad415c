// EMA set, Lookahead and BatchNorm recompute: closed forms, policies, exact swaps, exact stats.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>

#include "ema/bn_recompute.h"
#include "ema/ema.h"
#include "ema/lookahead.h"
#include "engine/autograd.h"
#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;

namespace {

// conv -> BN -> relu -> conv -> BN: parameters and float buffers in both arenas.
std::shared_ptr<nn::Sequential> net_with_bn(Rng& rng) {
  auto net = std::make_shared<nn::Sequential>();
  net->add(std::make_shared<nn::Conv2d>(2, 3, 3, rng, 1, 1, false));
  net->add(std::make_shared<nn::BatchNorm2d>(3));
  net->add(std::make_shared<nn::ReLU>());
  net->add(std::make_shared<nn::Conv2d>(3, 2, 1, rng, 1, 0, true));
  net->add(std::make_shared<nn::BatchNorm2d>(2));
  net->pack_arenas();
  return net;
}

// Sets every live weight to `value`.
void set_live(nn::Module& m, float value) { Tensor(m.parameter_arena()).fill_(value); }
// Sets every value of an arena.
void set_arena(const Tensor& arena, float value) { Tensor(arena).fill_(value); }

}  // namespace

TEST_CASE("ema: constant decay, period 1, against the closed form") {
  Rng rng(0);
  const auto net = net_with_bn(rng);
  set_live(*net, 1.0f);  // e0 = 1
  ema::EmaSet set(*net, {.decays = {0.9f, 0.5f}, .every = 1, .warmup = false});
  // w_t = t for t = 1..5: e_t = a e_{t-1} + (1 - a) t.
  double e9 = 1.0, e5 = 1.0;
  for (int t = 1; t <= 5; ++t) {
    set_live(*net, static_cast<float>(t));
    CHECK(set.after_step(t));
    e9 = 0.9 * e9 + 0.1 * t;
    e5 = 0.5 * e5 + 0.5 * t;
  }
  const int64_t n = net->parameter_arena().numel();
  check_close(set.parameters(0), std::vector<float>(n, static_cast<float>(e9)), 1e-5, 1e-6);
  check_close(set.parameters(1), std::vector<float>(n, static_cast<float>(e5)), 1e-5, 1e-6);
  CHECK(set.updates() == 5);
}

TEST_CASE("ema: warm-up decay and period T, K decays in one pass") {
  Rng rng(1);
  const auto net = net_with_bn(rng);
  set_live(*net, 0.0f);
  const std::vector<float> decays = {0.968f, 0.984f, 0.992f, 0.996f, 0.998f};
  ema::EmaSet set(*net, {.decays = decays, .every = 16, .warmup = true});
  std::vector<double> expected(decays.size(), 0.0);
  for (int64_t t = 1; t <= 160; ++t) {
    const float w = std::sin(0.1f * static_cast<float>(t));
    set_live(*net, w);
    const bool updated = set.after_step(t);
    CHECK(updated == (t % 16 == 0));
    if (!updated) continue;
    for (size_t k = 0; k < decays.size(); ++k) {
      // t = T at the first update: a_eff = min(a, (t + 1) / (t + 10)).
      const double a = std::min<double>(decays[k], static_cast<float>(t + 1) / static_cast<float>(t + 10));
      CHECK(set.effective_decay(k, t) == doctest::Approx(a));
      expected[k] = a * expected[k] + (1 - a) * w;
    }
  }
  CHECK(set.effective_decay(0, 16) == doctest::Approx(17.0 / 26.0));
  // At another period the paper's warm-up is converted as the paper converts decays: a^(T/16).
  ema::EmaSet every_step(*net, {.decays = decays, .every = 1, .warmup = true});
  CHECK(every_step.effective_decay(4, 16) == doctest::Approx(std::pow(17.0 / 26.0, 1.0 / 16.0)));
  CHECK(every_step.effective_decay(4, 100000) == 0.998f);
  for (size_t k = 0; k < decays.size(); ++k)
    check_close(set.parameters(k).slice(0, 4), std::vector<float>(4, static_cast<float>(expected[k])), 1e-5, 1e-5);
  CHECK(set.name(4) == "ema0.998");
}

TEST_CASE("ema: buffer policies average or copy; integer counters are never averaged") {
  Rng rng(2);
  const auto net = net_with_bn(rng);
  Tensor(net->buffer_arena()).fill_(2.0f);
  ema::EmaSet averaged(*net, {.decays = {0.5f}, .every = 1, .warmup = false, .buffers = ema::BufferPolicy::Average});
  ema::EmaSet copied(*net, {.decays = {0.5f}, .every = 1, .warmup = false, .buffers = ema::BufferPolicy::Copy});
  Tensor(net->buffer_arena()).fill_(4.0f);
  averaged.after_step(1);
  copied.after_step(1);
  const int64_t n = net->buffer_arena().numel();
  check_close(averaged.buffers(0), std::vector<float>(n, 3.0f));
  check_close(copied.buffers(0), std::vector<float>(n, 4.0f));
  CHECK(n == 10);  // running mean and var of 3 + 2 channels; num_batches_tracked stays out
}

TEST_CASE("ema: evaluating an average swaps it in and restores the live weights bit for bit") {
  Rng rng(3);
  const auto net = net_with_bn(rng);
  ema::EmaSet set(*net, {.decays = {0.9f, 0.99f}, .every = 1, .warmup = true});
  for (int t = 1; t <= 7; ++t) {
    Tensor(net->parameter_arena()).add_(Tensor::normal(net->parameter_arena().shape(), 0, 0.1f, rng));
    set.after_step(t);
  }
  const std::vector<float> live = net->parameter_arena().to_vector<float>();
  const std::vector<float> live_buffers = net->buffer_arena().to_vector<float>();
  const Tensor x = Tensor::normal({4, 2, 5, 5}, 0, 1, rng);
  const std::vector<float> average = set.parameters(1).to_vector<float>();
  net->eval();
  {
    ema::EmaSet::Use use(set, 1);
    CHECK(net->parameter_arena().to_vector<float>() == average);
    CHECK(net->parameters()[0].to_vector<float>() == std::vector<float>(average.begin(), average.begin() + 54));
    NoGradGuard no_grad;
    (void)(*net)(x);
  }
  CHECK(net->parameter_arena().to_vector<float>() == live);
  CHECK(net->buffer_arena().to_vector<float>() == live_buffers);
}

TEST_CASE("ema: state survives a checkpoint round trip exactly; other settings are refused") {
  Rng rng(4);
  const auto net = net_with_bn(rng);
  ema::EmaSet a(*net, {.decays = {0.9f, 0.99f}, .every = 2});
  for (int t = 1; t <= 6; ++t) {
    Tensor(net->parameter_arena()).add_(Tensor::full(net->parameter_arena().shape(), 0.25f));
    a.after_step(t);
  }
  ema::EmaSet b(*net, {.decays = {0.9f, 0.99f}, .every = 2});
  b.load_state(a.state_tensors(), a.state_metadata());
  CHECK(b.updates() == 3);
  for (size_t k = 0; k < 2; ++k) {
    CHECK(b.parameters(k).to_vector<float>() == a.parameters(k).to_vector<float>());
    CHECK(b.buffers(k).to_vector<float>() == a.buffers(k).to_vector<float>());
  }
  ema::EmaSet other(*net, {.decays = {0.9f, 0.999f}, .every = 2});
  CHECK_THROWS_WITH_AS(other.load_state(a.state_tensors(), a.state_metadata()), doctest::Contains("polyak.ema.decays"),
                       std::invalid_argument);
  CHECK_THROWS_AS(ema::EmaSet(*net, {.decays = {1.0f}}), std::invalid_argument);
  CHECK_THROWS_AS(ema::EmaSet(*net, {.decays = {0.9f}, .every = 0}), std::invalid_argument);
}

TEST_CASE("ema: scaling the paper's schedule to a run keeps each window's share, 30 updates in the fastest, and the warm-up's share") {
  const ema::EmaOptions paper;
  constexpr double kPaperSteps = 200.0 * 391.0;
  // At the paper's length: the paper's five decays at T = 16, exactly.
  const ema::EmaOptions same = ema::scaled_to_run(paper, 200 * 391);
  CHECK(same.every == 16);
  CHECK(same.decays == paper.decays);
  // The README's worked example: 10 epochs of 352 steps.
  const ema::EmaOptions ten = ema::scaled_to_run(paper, 3520);
  CHECK(ten.every == 1);
  CHECK(ten.decays == std::vector<float>{0.956f, 0.978f, 0.989f, 0.9944f, 0.9972f});
  // A fixed T gives the decays for that T.
  CHECK(ema::scaled_to_run(paper, 3520, 4).every == 4);
  CHECK(ema::scaled_to_run(paper, 3520, 4).decays.front() == doctest::Approx(1 - 4 / 22.5).epsilon(0.01));

  // The slowest average's warm-up ends where ((t+1)/(t+10))^(T/16) reaches a: at t =
  // (10b - 1)/(1 - b) with b = a^(16/T); 4,490 of the paper's 78,200 steps (5.7%).
  const auto warmup_end = [](double a, double every) {
    const double b = std::pow(a, 16.0 / every);
    return (10.0 * b - 1.0) / (1.0 - b);
  };
  const double paper_warmup_share = warmup_end(paper.decays.back(), 16) / kPaperSteps;
  // From one epoch (352 steps) up, no decay is clamped, all five stay apart, each
  // window keeps its share of the run (within the 2.5% of the rounding), the fastest
  // has 30 updates once the run allows it, and the warm-up keeps about its share.
  for (const int64_t steps : {352, 391, 1000, 3520, 4700, 7040, 35200, 78200, 391000}) {
    CAPTURE(steps);
    const ema::EmaOptions s = ema::scaled_to_run(paper, steps);
    REQUIRE(s.decays.size() == 5);
    CHECK(s.every >= 1);
    CHECK(s.every <= 16);
    for (size_t k = 0; k < 5; ++k) {
      CAPTURE(k);
      CHECK(s.decays[k] > 0.5f);
      if (k) CHECK(s.decays[k] > s.decays[k - 1]);
      const double share = static_cast<double>(s.every) / (1.0 - s.decays[k]) / static_cast<double>(steps);
      const double paper_share = 16.0 / (1.0 - paper.decays[k]) / kPaperSteps;
      CHECK(share == doctest::Approx(paper_share).epsilon(0.026));
    }
    const double fastest_updates = 1.0 / (1.0 - s.decays[0]);
    if (steps >= 4700) CHECK(fastest_updates >= 29.0);
    if (steps < 4700) CHECK(s.every == 1);
    // The paper's 10-step offset in (t+1)/(t+10) does not scale: it shortens the warm-up
    // of a run of a few epochs by some steps.
    const double warmup_share = warmup_end(s.decays.back(), static_cast<double>(s.every)) / static_cast<double>(steps);
    if (steps >= 3520) CHECK(warmup_share == doctest::Approx(paper_warmup_share).epsilon(0.1));
    CHECK(warmup_share > 0.5 * paper_warmup_share);
    CHECK(warmup_share < 1.1 * paper_warmup_share);
  }
}

TEST_CASE("bn recompute: running statistics become the exact statistics of each BN input over the batches") {
  Rng rng(5);
  const auto net = net_with_bn(rng);
  std::vector<Tensor> batches;
  for (int i = 0; i < 3; ++i) batches.push_back(Tensor::normal({6, 2, 4, 4}, 0.5f, 2.0f, rng));
  size_t next = 0;
  const auto source = [&]() -> std::optional<Tensor> {
    if (next == batches.size()) return std::nullopt;
    return batches[next++];
  };
  CHECK(ema::recompute_bn(*net, source) == 3);
  CHECK(!net->is_training());

  // Independently: each BN input in train mode (batch statistics, no running stats).
  auto* conv1 = dynamic_cast<nn::Conv2d*>(net->named_modules()[1].second);
  auto* bn1 = dynamic_cast<nn::BatchNorm2d*>(net->named_modules()[2].second);
  auto* conv2 = dynamic_cast<nn::Conv2d*>(net->named_modules()[4].second);
  auto* bn2 = dynamic_cast<nn::BatchNorm2d*>(net->named_modules()[5].second);
  NoGradGuard no_grad;
  for (auto [layer, input_of] : std::vector<std::pair<nn::BatchNorm2d*, int>>{{bn1, 1}, {bn2, 2}}) {
    const int64_t C = layer->running_mean.numel();
    std::vector<double> mean_acc(C, 0.0), var_acc(C, 0.0);
    for (const Tensor& x : batches) {
      Tensor h = conv1->forward(x);
      if (input_of == 2)
        h = conv2->forward(relu(batch_norm(h, bn1->weight, bn1->bias, {}, {}, {}, {.training = true})));
      // Per-batch mean and unbiased variance of each channel.
      const Tensor v = sum(pow_scalar(h - mean(h, {0, 2, 3}, true), 2.0f), {0, 2, 3});
      const std::vector<float> mv = mean(h, {0, 2, 3}).to_vector<float>(), vv = v.to_vector<float>();
      const double n = static_cast<double>(h.numel() / C);
      for (int64_t c = 0; c < C; ++c) {
        mean_acc[c] += mv[c] / static_cast<double>(batches.size());
        var_acc[c] += vv[c] / (n - 1) / static_cast<double>(batches.size());
      }
    }
    std::vector<float> mean_f(mean_acc.begin(), mean_acc.end()), var_f(var_acc.begin(), var_acc.end());
    check_close(layer->running_mean, mean_f, 1e-5, 1e-4);
    check_close(layer->running_var, var_f, 1e-5, 1e-4);
    CHECK(layer->num_batches_tracked.item<int64_t>() == 3);
    CHECK(layer->momentum.has_value());  // restored
  }
}

TEST_CASE("bn recompute: a buffer backup restores the statistics the model carried") {
  Rng rng(6);
  const auto net = net_with_bn(rng);
  Tensor(net->buffer_arena()).fill_(0.75f);
  const std::vector<float> before = net->buffer_arena().to_vector<float>();
  {
    ema::BufferBackup backup(*net);
    const Tensor x = Tensor::normal({4, 2, 4, 4}, 0, 1, rng);
    bool given = false;
    ema::recompute_bn(*net, [&]() -> std::optional<Tensor> {
      if (given) return std::nullopt;
      given = true;
      return x;
    });
    CHECK(net->buffer_arena().to_vector<float>() != before);
  }
  CHECK(net->buffer_arena().to_vector<float>() == before);
}

TEST_CASE("lookahead: slow <- decay slow + (1 - decay) fast, then fast <- slow, parameters and buffers") {
  Rng rng(3);
  const auto net = net_with_bn(rng);
  set_arena(net->parameter_arena(), 1.0f);
  set_arena(net->buffer_arena(), 2.0f);
  ema::Lookahead lookahead(*net);  // slow = 1 (parameters), 2 (buffers)
  // Two updates after the live weights moved: slow_1 = 0.5 * 1 + 0.5 * 5 = 3, and
  // slow_2 = 0.75 * 3 + 0.25 * 7 = 4 (fast goes from the switched-back 3 to 7).
  set_arena(net->parameter_arena(), 5.0f);
  set_arena(net->buffer_arena(), 6.0f);
  lookahead.update(0.5f);
  const int64_t p = net->parameter_arena().numel(), b = net->buffer_arena().numel();
  check_close(net->parameter_arena(), std::vector<float>(static_cast<size_t>(p), 3.0f), 1e-6, 1e-6);
  check_close(net->buffer_arena(), std::vector<float>(static_cast<size_t>(b), 4.0f), 1e-6, 1e-6);
  set_arena(net->parameter_arena(), 7.0f);
  lookahead.update(0.75f);
  check_close(lookahead.parameters(), std::vector<float>(static_cast<size_t>(p), 4.0f), 1e-6, 1e-6);
  // The live weights are the average, bit for bit.
  const std::vector<float> live = net->parameter_arena().to_vector<float>(), slow = lookahead.parameters().to_vector<float>();
  CHECK(std::memcmp(live.data(), slow.data(), live.size() * sizeof(float)) == 0);
  // Decay 1 puts the average back unchanged, whatever the live weights did.
  set_arena(net->parameter_arena(), -9.0f);
  lookahead.update(1.0f);
  check_close(net->parameter_arena(), std::vector<float>(static_cast<size_t>(p), 4.0f), 0, 0);
  CHECK_THROWS_AS(lookahead.update(1.5f), std::invalid_argument);
  CHECK_THROWS_AS(lookahead.update(-0.1f), std::invalid_argument);
}
