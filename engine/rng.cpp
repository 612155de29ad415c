#include "engine/rng.h"

#include <cmath>
#include <numbers>

namespace polyak {

uint32_t Rng::next_u32() {
  const uint64_t block = state_.position / 4;
  if (block != cached_block_) {
    philox4x32(block, state_.seed, cached_.data());
    cached_block_ = block;
  }
  return cached_[state_.position++ % 4];
}

float Rng::uniform() { return uniform_from_bits(next_u32()); }

float Rng::uniform(float low, float high) { return low + (high - low) * uniform(); }

float Rng::normal() {
  // Box-Muller: for U1 in (0,1], U2 in [0,1), sqrt(-2 ln U1) cos(2 pi U2) ~ N(0,1).
  const float u1 = 1.0f - uniform();
  const float u2 = uniform();
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(2.0f * std::numbers::pi_v<float> * u2);
}

uint64_t Rng::below(uint64_t n) {
  // Rejection sampling on 64-bit draws removes the modulo bias.
  const uint64_t limit = ~uint64_t{0} - (~uint64_t{0} % n);
  for (;;) {
    const uint64_t hi = next_u32();
    const uint64_t draw = (hi << 32) | next_u32();
    if (draw < limit) return draw % n;
  }
}

uint64_t Rng::reserve_blocks(uint64_t blocks) {
  const uint64_t first = (state_.position + 3) / 4;  // next whole block
  state_.position = (first + blocks) * 4;
  return first;
}

}  // namespace polyak
