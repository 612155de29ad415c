// Sum over any set of dims of a contiguous tensor, accumulated in double so that long
// sums (a loss over a batch, a bias gradient over N*H*W positions) keep float accuracy.
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

void cpu::reduce_sum(const ReduceGeom& g, const float* x, float* y) {
  // Output strides: contiguous over the kept dims, 0 over the reduced ones, so that
  // walking the input in order visits output element sum_d index_d * out_stride_d.
  int64_t out_strides[kMaxDims] = {};
  int64_t out_n = 1;
  for (int d = g.ndim - 1; d >= 0; --d) {
    out_strides[d] = g.reduce[d] ? 0 : out_n;
    if (!g.reduce[d]) out_n *= g.shape[d];
  }
  const int last = g.ndim - 1;
  const int64_t inner = g.ndim ? g.shape[last] : 1;
  const bool inner_reduced = g.ndim ? g.reduce[last] : true;
  int64_t rows = 1;
  for (int d = 0; d < last; ++d) rows *= g.shape[d];

  const int threads = rows * inner >= 65536 ? num_threads() : 1;
  std::vector<std::vector<double>> partial(threads, std::vector<double>(out_n, 0.0));
  const auto body = [&](int64_t begin, int64_t end, std::vector<double>& acc) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t rest = r, out = 0;
      for (int d = last - 1; d >= 0; --d) {
        out += (rest % g.shape[d]) * out_strides[d];
        rest /= g.shape[d];
      }
      const float* row = x + r * inner;
      if (inner_reduced) {
        double s = 0;
        for (int64_t j = 0; j < inner; ++j) s += row[j];
        acc[out] += s;
      } else {
        for (int64_t j = 0; j < inner; ++j) acc[out + j] += row[j];
      }
    }
  };
  if (threads == 1) {
    body(0, rows, partial[0]);
  } else {
    parallel_for(rows, inner * 1000, [&](int64_t begin, int64_t end) { body(begin, end, partial[omp_thread_id()]); });
  }
  for (int64_t i = 0; i < out_n; ++i) {
    double s = 0;
    for (const auto& p : partial) s += p[i];
    y[i] = static_cast<float>(s);
  }
}

}  // namespace polyak
