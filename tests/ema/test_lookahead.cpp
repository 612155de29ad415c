// Lookahead: the average's update against its closed form, the switch-back, buffers.
#include <doctest/doctest.h>

#include <cstring>

#include "ema/lookahead.h"
#include "engine/nn/layers.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;

namespace {

std::shared_ptr<nn::Sequential> small_net(Rng& rng) {
  auto net = std::make_shared<nn::Sequential>();
  net->add(std::make_shared<nn::Conv2d>(2, 3, 3, rng, 1, 1, false));
  net->add(std::make_shared<nn::BatchNorm2d>(3));
  net->pack_arenas();
  return net;
}

void fill(const Tensor& arena, float value) { Tensor(arena).fill_(value); }

}  // namespace

TEST_CASE("lookahead: slow <- decay slow + (1 - decay) fast, then fast <- slow, parameters and buffers") {
  Rng rng(3);
  const auto net = small_net(rng);
  fill(net->parameter_arena(), 1.0f);
  fill(net->buffer_arena(), 2.0f);
  ema::Lookahead lookahead(*net);  // slow = 1 (parameters), 2 (buffers)
  // Two updates after the live weights moved: slow_1 = 0.5 * 1 + 0.5 * 5 = 3, and
  // slow_2 = 0.75 * 3 + 0.25 * 7 = 4 (fast goes from the switched-back 3 to 7).
  fill(net->parameter_arena(), 5.0f);
  fill(net->buffer_arena(), 6.0f);
  lookahead.update(0.5f);
  const int64_t p = net->parameter_arena().numel(), b = net->buffer_arena().numel();
  check_close(net->parameter_arena(), std::vector<float>(static_cast<size_t>(p), 3.0f), 1e-6, 1e-6);
  check_close(net->buffer_arena(), std::vector<float>(static_cast<size_t>(b), 4.0f), 1e-6, 1e-6);
  fill(net->parameter_arena(), 7.0f);
  lookahead.update(0.75f);
  check_close(lookahead.parameters(), std::vector<float>(static_cast<size_t>(p), 4.0f), 1e-6, 1e-6);
  // The live weights are the average, bit for bit.
  const std::vector<float> live = net->parameter_arena().to_vector<float>(), slow = lookahead.parameters().to_vector<float>();
  CHECK(std::memcmp(live.data(), slow.data(), live.size() * sizeof(float)) == 0);
  // Decay 1 puts the average back unchanged, whatever the live weights did.
  fill(net->parameter_arena(), -9.0f);
  lookahead.update(1.0f);
  check_close(net->parameter_arena(), std::vector<float>(static_cast<size_t>(p), 4.0f), 0, 0);
  CHECK_THROWS_AS(lookahead.update(1.5f), std::invalid_argument);
  CHECK_THROWS_AS(lookahead.update(-0.1f), std::invalid_argument);
}
