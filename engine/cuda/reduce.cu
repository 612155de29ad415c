// Sum over any set of dims of a contiguous tensor (the CPU file: engine/cpu/reduce.cpp),
// accumulated in double, deterministically: no atomics, every sum is taken in a fixed
// order that depends only on the shape and the GPU's SM count.
//
// The dims are first collapsed (size-1 dims dropped, neighbours with the same flag
// merged), leaving alternating groups of kept and reduced dims. Output element o sums
// the R elements x[base(o) + offset(j)], j < R. Two passes:
//   1. The R elements of each output are cut into S segments (S chosen so the GPU has
//      a few blocks per SM); each segment's sum, in double, goes to a partial buffer.
//      When the innermost dim is reduced (and R is not tiny), a block of 256 threads
//      sums one segment, reading consecutive elements (coalesced), and combines its
//      threads with a fixed tree; otherwise one thread sums one segment of one output,
//      and neighbouring threads read neighbouring outputs (coalesced again).
//   2. One thread per output adds its S partials in segment order and rounds to float.
// With S = 1 the first pass writes the output directly.
#include <vector>

#include "engine/cuda/common.cuh"

namespace polyak {

using namespace cuda_detail;

namespace {

constexpr int kGroups = kMaxDims / 2 + 1;

struct ReducePlan {
  int nk = 0, nr = 0;  // kept and reduced groups, outermost first
  int64_t kshape[kGroups] = {}, kstride[kGroups] = {};
  int64_t rshape[kGroups] = {}, rstride[kGroups] = {};
};

// Offset of flat index i (row-major over `shape`) under `stride`.
__device__ inline int64_t group_offset(int64_t i, int n, const int64_t* shape, const int64_t* stride) {
  int64_t offset = 0;
  for (int d = n - 1; d > 0; --d) {
    const int64_t q = i / shape[d];
    offset += (i - q * shape[d]) * stride[d];
    i = q;
  }
  return n > 0 ? offset + i * stride[0] : offset;
}

// Pass 1, one block per (output, segment).
__global__ void reduce_block_kernel(const float* x, ReducePlan p, int64_t R, int64_t chunk, int S, double* partial,
                                    float* y) {
  const int64_t o = blockIdx.x / S;
  const int s = static_cast<int>(blockIdx.x % S);
  const int64_t base = group_offset(o, p.nk, p.kshape, p.kstride);
  const int64_t begin = s * chunk, end = min(R, begin + chunk);
  double acc = 0.0;
  for (int64_t j = begin + threadIdx.x; j < end; j += kThreads) acc += x[base + group_offset(j, p.nr, p.rshape, p.rstride)];
  const double total = block_sum<kThreads>(acc);
  if (threadIdx.x == 0) {
    if (S == 1) {
      y[o] = static_cast<float>(total);
    } else {
      partial[o * S + s] = total;
    }
  }
}

// Pass 1, one thread per (output, segment); blockIdx.y is the segment.
__global__ void reduce_thread_kernel(const float* x, ReducePlan p, int64_t out_n, int64_t R, int64_t chunk, int S,
                                     double* partial, float* y) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= out_n) return;
  const int s = static_cast<int>(blockIdx.y);
  const int64_t base = group_offset(o, p.nk, p.kshape, p.kstride);
  const int64_t begin = s * chunk, end = min(R, begin + chunk);
  double acc = 0.0;
  for (int64_t j = begin; j < end; ++j) acc += x[base + group_offset(j, p.nr, p.rshape, p.rstride)];
  if (S == 1) {
    y[o] = static_cast<float>(acc);
  } else {
    partial[s * out_n + o] = acc;
  }
}

// Pass 2: partial[o * S + s] (output-major) or partial[s * out_n + o] (segment-major).
__global__ void reduce_finish_kernel(const double* partial, int64_t out_n, int S, bool output_major, float* y) {
  POLYAK_GRID_LOOP(o, out_n) {
    double total = 0.0;
    for (int s = 0; s < S; ++s) total += output_major ? partial[o * S + s] : partial[s * out_n + o];
    y[o] = static_cast<float>(total);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

void CudaBackend::reduce_sum(const ReduceGeom& geom, const float* x, float* y) {
  // Collapse into groups, outermost first.
  std::vector<int64_t> sizes;
  std::vector<bool> reduced;
  int64_t out_n = 1, R = 1;
  for (int d = 0; d < geom.ndim; ++d) {
    const int64_t size = geom.shape[d];
    if (geom.reduce[d]) {
      R *= size;
    } else {
      out_n *= size;
    }
    if (size == 1) continue;
    if (!sizes.empty() && reduced.back() == geom.reduce[d]) {
      sizes.back() *= size;
    } else {
      sizes.push_back(size);
      reduced.push_back(geom.reduce[d]);
    }
  }
  if (out_n == 0) return;
  if (R == 0) {
    fill(y, out_n, 0.0f);
    return;
  }
  if (R == 1) {
    copy(y, x, static_cast<size_t>(out_n) * sizeof(float));
    return;
  }

  ReducePlan p;
  int64_t stride = 1;
  std::vector<int64_t> strides(sizes.size());
  for (size_t i = sizes.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= sizes[i];
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (reduced[i]) {
      p.rshape[p.nr] = sizes[i];
      p.rstride[p.nr++] = strides[i];
    } else {
      p.kshape[p.nk] = sizes[i];
      p.kstride[p.nk++] = strides[i];
    }
  }

  const int64_t target_blocks = 4 * static_cast<int64_t>(sm_count_);
  const bool inner_reduced = reduced.back();
  if (inner_reduced && R > 64) {
    int64_t S = std::min(ceil_div(R, 2048), std::max<int64_t>(1, ceil_div(target_blocks, out_n)));
    const int64_t chunk = ceil_div(R, S);
    S = ceil_div(R, chunk);
    Scratch partial(*this, S > 1 ? static_cast<size_t>(out_n * S) * sizeof(double) : 0);
    const int64_t blocks = out_n * S;
    if (blocks > std::numeric_limits<int32_t>::max()) throw std::invalid_argument("reduce_sum: tensor too large");
    reduce_block_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream_>>>(
        x, p, R, chunk, static_cast<int>(S), partial.as<double>(), y);
    POLYAK_CUDA_LAUNCHED();
    if (S > 1) {
      reduce_finish_kernel<<<grid_for(out_n), kThreads, 0, stream_>>>(partial.as<double>(), out_n,
                                                                        static_cast<int>(S), true, y);
      POLYAK_CUDA_LAUNCHED();
    }
  } else {
    const int64_t blocks_x = ceil_div(out_n, kThreads);
    if (blocks_x > std::numeric_limits<int32_t>::max()) throw std::invalid_argument("reduce_sum: tensor too large");
    int64_t S = std::min({ceil_div(R, 32), std::max<int64_t>(1, ceil_div(target_blocks, blocks_x)), int64_t{65535}});
    const int64_t chunk = ceil_div(R, S);
    S = ceil_div(R, chunk);
    Scratch partial(*this, S > 1 ? static_cast<size_t>(out_n * S) * sizeof(double) : 0);
    const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(S));
    reduce_thread_kernel<<<grid, kThreads, 0, stream_>>>(x, p, out_n, R, chunk, static_cast<int>(S),
                                                          partial.as<double>(), y);
    POLYAK_CUDA_LAUNCHED();
    if (S > 1) {
      reduce_finish_kernel<<<grid_for(out_n), kThreads, 0, stream_>>>(partial.as<double>(), out_n,
                                                                        static_cast<int>(S), false, y);
      POLYAK_CUDA_LAUNCHED();
    }
  }
}

}  // namespace polyak
