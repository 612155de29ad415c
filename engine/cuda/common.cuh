// What the kernel files share: launch sizes, grid-stride loops, fixed-order block
// reductions (deterministic: no atomics, the same tree every time), and the collapse of
// strided geometries to as few dims as possible.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "engine/cuda/cuda_backend.h"

namespace polyak::cuda_detail {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items (capped: the loop covers the rest).
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));
}

#define POLYAK_GRID_LOOP(i, n)                                                                   \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Sum over the 32 lanes of a warp; lane 0 holds the result. A fixed butterfly, so the
// result does not depend on timing.
template <class T>
__device__ inline T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

template <class T>
__device__ inline T warp_max(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over a block of THREADS threads (a multiple of 32); thread 0 holds the result.
// Every thread of the block must call it.
template <int THREADS, class T>
__device__ inline T block_sum(T v) {
  static_assert(THREADS % 32 == 0 && THREADS <= 1024, "block size");
  __shared__ T partial[THREADS / 32];
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  T total = T(0);
  if (threadIdx.x == 0)
    for (int w = 0; w < THREADS / 32; ++w) total += partial[w];
  __syncthreads();  // `partial` may be reused by a following call
  return total;
}

// A shape walked by two strided operands, with the dims that need no separate index
// merged: size-1 dims dropped, and dim d folded into d+1 when both operands step
// through them as one (stride[d] == stride[d+1] * shape[d+1]). Most tensors collapse to
// one to three dims, so the per-element index arithmetic stays short.
struct Strided2 {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t s0[kMaxDims] = {};
  int64_t s1[kMaxDims] = {};
  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
  }
};

inline Strided2 collapse(int ndim, const int64_t* shape, const int64_t* s0, const int64_t* s1) {
  Strided2 out;
  // Walk from the innermost dim outwards, building the result innermost-first.
  int64_t rs[kMaxDims], r0[kMaxDims], r1[kMaxDims];
  int n = 0;
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[d] == 1) continue;
    if (n > 0 && s0[d] == r0[n - 1] * rs[n - 1] && s1[d] == r1[n - 1] * rs[n - 1]) {
      rs[n - 1] *= shape[d];
      continue;
    }
    rs[n] = shape[d];
    r0[n] = s0[d];
    r1[n] = s1[d];
    ++n;
  }
  out.ndim = n;
  for (int i = 0; i < n; ++i) {
    out.shape[i] = rs[n - 1 - i];
    out.s0[i] = r0[n - 1 - i];
    out.s1[i] = r1[n - 1 - i];
  }
  return out;
}

// Offsets of flat element i (row-major over g.shape) under both stride sets. Index is
// uint32_t when every index and offset fits, which makes the divisions cheap.
template <class Index>
__host__ __device__ inline void strided_offsets(const Strided2& g, Index i, Index& o0, Index& o1) {
  o0 = 0;
  o1 = 0;
  for (int d = g.ndim - 1; d > 0; --d) {
    const Index extent = static_cast<Index>(g.shape[d]);
    const Index q = i / extent;
    const Index r = i - q * extent;
    o0 += r * static_cast<Index>(g.s0[d]);
    o1 += r * static_cast<Index>(g.s1[d]);
    i = q;
  }
  if (g.ndim > 0) {
    o0 += i * static_cast<Index>(g.s0[0]);
    o1 += i * static_cast<Index>(g.s1[0]);
  }
}

// True when 32-bit indexing is enough: every flat index and every offset reached
// (the extent of each operand, all strides non-negative) stays below 2^32.
inline bool fits_u32(const Strided2& g) {
  constexpr int64_t limit = std::numeric_limits<uint32_t>::max();
  if (g.numel() >= limit) return false;
  int64_t e0 = 0, e1 = 0;
  for (int d = 0; d < g.ndim; ++d) {
    if (g.s0[d] < 0 || g.s1[d] < 0) return false;
    e0 += (g.shape[d] - 1) * g.s0[d];
    e1 += (g.shape[d] - 1) * g.s1[d];
  }
  return e0 < limit && e1 < limit;
}

}  // namespace polyak::cuda_detail
