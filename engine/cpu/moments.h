// Sums and moments over rows of floats: BatchNorm's statistics (engine/cpu/batchnorm.cpp),
// and the moments of each plane of a convolution's output, computed as the convolution
// writes it (engine/cpu/conv2d_shifted.cpp), which a BatchNorm that follows combines instead of
// reading its input once more.
//
// The sums run over rows of HW floats in kLanes float lanes (a fixed order the compiler
// turns into vector adds; one double accumulator would make a serial chain of dependent
// adds, 4 cycles per element), which are added into a double total every kFlush
// elements: after every row, that costs more than a row of an 8x8 map (64 floats).
#pragma once

#include <algorithm>
#include <cstdint>

#include "engine/backend.h"

namespace polyak::cpu {

constexpr int kLanes = 16;
constexpr int64_t kFlush = 1024;

// A running sum of values given row by row, in kLanes float lanes that are flushed into
// a double total every kFlush values.
struct LaneSum {
  float lanes[kLanes] = {};
  double total = 0.0;
  int64_t pending = 0;

  // Adds f(s) for the row's elements s < n.
  template <class F>
  void add_row(int64_t n, F f) {
    float acc[kLanes];  // a local copy: the row cannot alias it, so it stays in registers
    std::copy(lanes, lanes + kLanes, acc);
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
      for (int l = 0; l < kLanes; ++l) acc[l] += f(i + l);
    for (int l = 0; i < n; ++i, ++l) acc[l] += f(i);
    std::copy(acc, acc + kLanes, lanes);
    pending += n;
    if (pending >= kFlush) flush();
  }
  void flush() {
    for (float& lane : lanes) {
      total += lane;
      lane = 0.0f;
    }
    pending = 0;
  }
  double sum() {
    flush();
    return total;
  }
};

// The sum of f(i) for i < n, for a short row already in L1, where LaneSum's one chain
// of vector adds would wait on each add's latency: four chains (kWide float lanes),
// totalled in double every kWideFlush values and at the end.
template <class F>
double sum_in_l1(int64_t n, F f) {
  constexpr int kWide = 4 * kLanes;
  constexpr int64_t kWideFlush = 4 * kFlush;
  double total = 0.0;
  for (int64_t start = 0; start < n; start += kWideFlush) {
    const int64_t end = std::min(n, start + kWideFlush);
    float acc[kWide] = {};
    int64_t i = start;
    for (; i + kWide <= end; i += kWide)
      for (int l = 0; l < kWide; ++l) acc[l] += f(i + l);
    for (int l = 0; l < kWide && i < end; ++i, ++l) acc[l] += f(i);  // the tail: fewer than kWide values
    // The lanes added as a tree of halves (a few vector adds; each lane holds at most
    // kWideFlush / kWide values, so float loses no more here than in the lanes).
#pragma GCC unroll 8
    for (int width = kWide / 2; width > 0; width /= 2)
      for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
    total += acc[0];
  }
  return total;
}

// The moments of one plane of n values, as kPlaneMoments floats (engine/kernels.h):
// {mean_hi, mean_lo, m2}, the mean being mean_hi + mean_lo (a float and its rounding
// error, so that the pair keeps a double's precision) and m2 the sum of squared
// deviations from it. Two passes over a plane that is still in L1: the mean, then the
// deviations from its float value mean_hi, corrected by the identity
//   sum (v - mean)^2 = sum (v - mean_hi)^2 - n (mean - mean_hi)^2.
inline void plane_moments(const float* v, int64_t n, float* out) {
  const double mean = n > 0 ? sum_in_l1(n, [v](int64_t i) { return v[i]; }) / static_cast<double>(n) : 0.0;
  const float mean_hi = static_cast<float>(mean);
  const double squares = sum_in_l1(n, [v, mean_hi](int64_t i) {
    const float d = v[i] - mean_hi;
    return d * d;
  });
  const double rounding = mean - static_cast<double>(mean_hi);
  out[0] = mean_hi;
  out[1] = static_cast<float>(rounding);
  out[2] = static_cast<float>(std::max(squares - static_cast<double>(n) * rounding * rounding, 0.0));
}

// The mean and biased variance of channel c of an (N, C, n) tensor from the moments of
// its N planes (moments[(i * C + c) * kPlaneMoments], n values each), by Chan's
// combination: the planes' m2 plus n times the squared deviations of their means.
inline void combine_plane_moments(const float* moments, int64_t N, int64_t C, int64_t c, int64_t n, double& mean,
                                  double& var) {
  const auto plane_mean = [&](int64_t i) {
    const float* m = moments + (i * C + c) * kPlaneMoments;
    return static_cast<double>(m[0]) + static_cast<double>(m[1]);
  };
  double sum_of_means = 0.0;
  for (int64_t i = 0; i < N; ++i) sum_of_means += plane_mean(i);
  mean = N > 0 ? sum_of_means / static_cast<double>(N) : 0.0;
  double m2 = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    const double d = plane_mean(i) - mean;
    m2 += static_cast<double>(moments[(i * C + c) * kPlaneMoments + 2]) + static_cast<double>(n) * d * d;
  }
  var = N * n > 0 ? m2 / static_cast<double>(N * n) : 0.0;
}

}  // namespace polyak::cpu
