// Reference 2-D pooling, NCHW, one (n, c) plane of H x W at a time.
//
// Output pixel (p, q) looks at the window of rows h in [p*sh - ph, p*sh - ph + kh) and
// columns w in [q*sw - pw, q*sw - pw + kw), clipped to the image.
// Max: y = the largest x of the window (padding is never chosen); argmax keeps the
//   flat index h * W + w of the winner in its plane, and the backward routes dy there:
//   dx[argmax[p,q]] += dy[p,q]. A NaN in the window wins (the last one), as in PyTorch.
// Average (count_include_pad, PyTorch's default): the divisor is always kh * kw;
//   dx[h,w] = the sum of dy[p,q] / (kh * kw) over the windows that hold (h,w).
#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/ref/kernels.h"

namespace polyak::ref {

namespace {

// Calls visit(plane, p, q, h_lo, h_hi, w_lo, w_hi) for every output pixel, with its
// window's in-image rows [h_lo, h_hi) and columns [w_lo, w_hi).
template <class Visit>
void for_each_window(const Pool2dGeom& g, Visit&& visit) {
  for (int64_t plane = 0; plane < g.N * g.C; ++plane)
    for (int64_t p = 0; p < g.P; ++p)
      for (int64_t q = 0; q < g.Q; ++q) {
        const int64_t h0 = p * g.stride_h - g.pad_h, w0 = q * g.stride_w - g.pad_w;
        visit(plane, p, q, std::max<int64_t>(h0, 0), std::min(h0 + g.kh, g.H), std::max<int64_t>(w0, 0),
              std::min(w0 + g.kw, g.W));
      }
}

}  // namespace

void max_pool2d_forward(const Pool2dGeom& g, const float* x, float* y, int32_t* argmax) {
  for_each_window(g, [&](int64_t plane, int64_t p, int64_t q, int64_t h_lo, int64_t h_hi, int64_t w_lo, int64_t w_hi) {
    const float* xp = x + plane * g.H * g.W;
    float best = -std::numeric_limits<float>::infinity();
    int64_t best_at = -1;  // stays -1 only for a window wholly inside the padding
    for (int64_t h = h_lo; h < h_hi; ++h)
      for (int64_t w = w_lo; w < w_hi; ++w)
        if (best_at < 0 || xp[h * g.W + w] > best || std::isnan(xp[h * g.W + w])) {
          best = xp[h * g.W + w];
          best_at = h * g.W + w;
        }
    y[(plane * g.P + p) * g.Q + q] = best;
    argmax[(plane * g.P + p) * g.Q + q] = static_cast<int32_t>(best_at);
  });
}

void max_pool2d_backward(const Pool2dGeom& g, const float* dy, const int32_t* argmax, float* dx) {
  std::fill(dx, dx + g.N * g.C * g.H * g.W, 0.0f);
  for (int64_t plane = 0; plane < g.N * g.C; ++plane)
    for (int64_t i = 0; i < g.P * g.Q; ++i) {
      const int32_t winner = argmax[plane * g.P * g.Q + i];
      if (winner >= 0) dx[plane * g.H * g.W + winner] += dy[plane * g.P * g.Q + i];
    }
}

void avg_pool2d_forward(const Pool2dGeom& g, const float* x, float* y) {
  const double divisor = static_cast<double>(g.kh * g.kw);
  for_each_window(g, [&](int64_t plane, int64_t p, int64_t q, int64_t h_lo, int64_t h_hi, int64_t w_lo, int64_t w_hi) {
    double total = 0;
    for (int64_t h = h_lo; h < h_hi; ++h)
      for (int64_t w = w_lo; w < w_hi; ++w) total += x[(plane * g.H + h) * g.W + w];
    y[(plane * g.P + p) * g.Q + q] = static_cast<float>(total / divisor);
  });
}

void avg_pool2d_backward(const Pool2dGeom& g, const float* dy, float* dx) {
  const float share = 1.0f / static_cast<float>(g.kh * g.kw);
  std::fill(dx, dx + g.N * g.C * g.H * g.W, 0.0f);
  for_each_window(g, [&](int64_t plane, int64_t p, int64_t q, int64_t h_lo, int64_t h_hi, int64_t w_lo, int64_t w_hi) {
    for (int64_t h = h_lo; h < h_hi; ++h)
      for (int64_t w = w_lo; w < w_hi; ++w) dx[(plane * g.H + h) * g.W + w] += dy[(plane * g.P + p) * g.Q + q] * share;
  });
}

}  // namespace polyak::ref
