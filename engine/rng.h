// Rng: the project's one random-number generator, Philox4x32-10 (Salmon et al., SC'11).
//
// Philox is counter-based: block i of the stream is a pure function philox(key=seed,
// counter=i) giving four 32-bit words. So the whole state is (seed, position), it
// saves and restores exactly, and a GPU kernel can draw the numbers it needs from
// reserved positions itself and get the same values as the CPU (see reserve()).
#pragma once

#include <array>
#include <cstdint>

#if defined(__CUDACC__)
#define POLYAK_HD __host__ __device__
#else
#define POLYAK_HD
#endif

namespace polyak {

// Ten rounds of the Philox4x32 bijection of `counter` under `key`.
POLYAK_HD inline void philox4x32(uint64_t counter, uint64_t key, uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// A uniform float in [0, 1) from the top 24 bits of a word (exactly representable).
POLYAK_HD inline float uniform_from_bits(uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

class Rng {
 public:
  struct State {
    uint64_t seed = 0;
    uint64_t position = 0;  // index of the next 32-bit word in the stream
    bool operator==(const State&) const = default;
  };

  explicit Rng(uint64_t seed = 0) : state_{seed, 0} {}

  State state() const { return state_; }
  void set_state(const State& state) { state_ = state; cached_block_ = kNoBlock; }
  uint64_t seed() const { return state_.seed; }

  uint32_t next_u32();
  float uniform();                      // [0, 1)
  float uniform(float low, float high);  // [low, high)
  float normal();                       // standard normal, Box-Muller
  uint64_t below(uint64_t n);           // uniform integer in [0, n), unbiased

  // Hands `blocks` Philox blocks (4 words each) to a kernel that draws them itself:
  // returns the first block index; the stream moves past them.
  uint64_t reserve_blocks(uint64_t blocks);

 private:
  static constexpr uint64_t kNoBlock = ~uint64_t{0};
  State state_;
  uint64_t cached_block_ = kNoBlock;
  std::array<uint32_t, 4> cached_{};
};

}  // namespace polyak
