// Dropout on the GPU (the CPU file: engine/cpu/dropout.cpp), drawing exactly the CPU's
// numbers: thread b computes Philox block first_block + b under key `seed` (rng.h's
// philox4x32 is __host__ __device__) and decides elements 4b .. 4b+3 with its four
// words: element i is kept when uniform_from_bits(word i % 4) >= p, and then
// y = x * (1 / (1 - p)), with the scale computed in float as on the CPU. So both
// devices drop the same elements and produce the same values bit for bit.
#include "engine/cuda/common.cuh"
#include "engine/rng.h"

namespace polyak {

using namespace cuda_detail;

namespace {

__global__ void dropout_forward_kernel(int64_t n, const float* x, float p, float scale, uint64_t seed,
                                       uint64_t first_block, float* y, uint8_t* keep) {
  const int64_t blocks = (n + 3) / 4;
  POLYAK_GRID_LOOP(b, blocks) {
    uint32_t words[4];
    philox4x32(first_block + static_cast<uint64_t>(b), seed, words);
    const int64_t begin = 4 * b, end = min(begin + 4, n);
    for (int64_t i = begin; i < end; ++i) {
      const bool kept = uniform_from_bits(words[i - begin]) >= p;
      keep[i] = kept ? 1 : 0;
      y[i] = kept ? x[i] * scale : 0.0f;
    }
  }
}

__global__ void dropout_backward_kernel(int64_t n, const float* dy, const uint8_t* keep, float scale, float* dx) {
  POLYAK_GRID_LOOP(i, n) dx[i] = keep[i] ? dy[i] * scale : 0.0f;
}

}  // namespace

void CudaBackend::dropout_forward(int64_t n, const float* x, float p, uint64_t seed, uint64_t first_block, float* y,
                                  uint8_t* keep) {
  if (n <= 0) return;
  const float scale = 1.0f / (1.0f - p);  // on the host, exactly as the CPU computes it
  dropout_forward_kernel<<<grid_for((n + 3) / 4), kThreads, 0, stream_>>>(n, x, p, scale, seed, first_block, y, keep);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::dropout_backward(int64_t n, const float* dy, const uint8_t* keep, float p, float* dx) {
  if (n <= 0) return;
  const float scale = 1.0f / (1.0f - p);
  dropout_backward_kernel<<<grid_for(n), kThreads, 0, stream_>>>(n, dy, keep, scale, dx);
  POLYAK_CUDA_LAUNCHED();
}

}  // namespace polyak
