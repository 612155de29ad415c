// Reference dropout. Element i draws word i % 4 of the Philox block first_block + i / 4
// under key `seed` (engine/rng.h), so that every device drops the same elements; it is
// kept when that word, as a uniform number in [0, 1), is at least p (probability 1 - p),
// and scaled by 1 / (1 - p) so that E[y] = x. Backward: dx = dy * keep / (1 - p).
#include "engine/ref/kernels.h"
#include "engine/rng.h"

namespace polyak::ref {

void dropout_forward(int64_t n, const float* x, float p, uint64_t seed, uint64_t first_block, float* y,
                     uint8_t* keep) {
  const float scale = 1.0f / (1.0f - p);
  uint32_t words[4];
  for (int64_t i = 0; i < n; ++i) {
    if (i % 4 == 0) philox4x32(first_block + static_cast<uint64_t>(i / 4), seed, words);
    keep[i] = uniform_from_bits(words[i % 4]) >= p ? 1 : 0;
    y[i] = keep[i] ? x[i] * scale : 0.0f;
  }
}

void dropout_backward(int64_t n, const float* dy, const uint8_t* keep, float p, float* dx) {
  const float scale = 1.0f / (1.0f - p);
  for (int64_t i = 0; i < n; ++i) dx[i] = keep[i] ? dy[i] * scale : 0.0f;
}

}  // namespace polyak::ref
