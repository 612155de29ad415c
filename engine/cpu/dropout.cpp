// Dropout kernels on the CPU.
//
// Element i draws word i of the Philox stream that starts at block `first_block`: word
// i is lane i % 4 of block first_block + i / 4 under key `seed`. It is kept when
// uniform_from_bits(word) >= p, i.e. with probability 1 - p, and scaled by 1 / (1 - p)
// so that E[y] = x. Because the draw depends only on (seed, block, lane), a GPU kernel
// computes the same mask, and the result does not depend on the thread count.
// Backward: dx = dy * keep / (1 - p).
#include <algorithm>

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"
#include "engine/rng.h"

namespace polyak {

void cpu::dropout_forward(int64_t n, const float* x, float p, uint64_t seed, uint64_t first_block, float* y,
                                 uint8_t* keep) {
  const float scale = 1.0f / (1.0f - p);
  const int64_t blocks = (n + 3) / 4;
  parallel_for(blocks, 64, [&](int64_t b0, int64_t b1) {
    uint32_t words[4];
    for (int64_t b = b0; b < b1; ++b) {
      philox4x32(first_block + static_cast<uint64_t>(b), seed, words);
      const int64_t end = std::min<int64_t>(4 * b + 4, n);
      for (int64_t i = 4 * b; i < end; ++i) {
        const bool kept = uniform_from_bits(words[i - 4 * b]) >= p;
        keep[i] = kept ? 1 : 0;
        y[i] = kept ? x[i] * scale : 0.0f;
      }
    }
  });
}

void cpu::dropout_backward(int64_t n, const float* dy, const uint8_t* keep, float p, float* dx) {
  const float scale = 1.0f / (1.0f - p);
  parallel_for(n, 2, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dx[i] = keep[i] ? dy[i] * scale : 0.0f;
  });
}

}  // namespace polyak
