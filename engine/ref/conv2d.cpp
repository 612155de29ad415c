// Reference 2-D convolution (cross-correlation, as PyTorch's conv2d), NCHW.
//
// Output pixel (p, q) of filter k sums over the input channels c and the taps (r, s)
// of the filter window placed at row h = p * stride_h - pad_h + r, column
// w = q * stride_w - pad_w + s; taps that fall in the padding read zeros:
//   y[n,k,p,q]  = bias[k] + sum_{c,r,s} x[n,c,h,w] * w[k,c,r,s]
// The gradients follow from that one sum, term by term:
//   dx[n,c,h,w] = sum of dy[n,k,p,q] * w[k,c,r,s] over the terms that read x[n,c,h,w]
//   dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n,c,h,w]
//   dbias[k]    = sum_{n,p,q} dy[n,k,p,q]
// Every sum is accumulated in double.
#include <vector>

#include "engine/ref/kernels.h"

namespace polyak::ref {

namespace {

// Calls term(y_at, x_at, w_at) for every in-image term of the convolution sum, with the
// offsets of the output element, the input element and the filter weight it multiplies.
template <class Term>
void for_each_term(const Conv2dGeom& g, Term&& term) {
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k)
      for (int64_t p = 0; p < g.P; ++p)
        for (int64_t q = 0; q < g.Q; ++q)
          for (int64_t c = 0; c < g.C; ++c)
            for (int64_t r = 0; r < g.R; ++r)
              for (int64_t s = 0; s < g.S; ++s) {
                const int64_t h = p * g.stride_h - g.pad_h + r, w = q * g.stride_w - g.pad_w + s;
                if (h < 0 || h >= g.H || w < 0 || w >= g.W) continue;  // padding: zero
                term(((n * g.K + k) * g.P + p) * g.Q + q, ((n * g.C + c) * g.H + h) * g.W + w,
                     ((k * g.C + c) * g.R + r) * g.S + s);
              }
}

void store(const std::vector<double>& sums, float* out) {
  for (size_t i = 0; i < sums.size(); ++i) out[i] = static_cast<float>(sums[i]);
}

}  // namespace

void conv2d_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias, float* y) {
  std::vector<double> sums(static_cast<size_t>(g.N * g.K * g.P * g.Q), 0.0);
  if (bias)
    for (size_t i = 0; i < sums.size(); ++i) sums[i] = bias[static_cast<int64_t>(i) / (g.P * g.Q) % g.K];
  for_each_term(g, [&](int64_t y_at, int64_t x_at, int64_t w_at) {
    sums[static_cast<size_t>(y_at)] += static_cast<double>(x[x_at]) * w[w_at];
  });
  store(sums, y);
}

void conv2d_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx) {
  std::vector<double> sums(static_cast<size_t>(g.N * g.C * g.H * g.W), 0.0);
  for_each_term(g, [&](int64_t y_at, int64_t x_at, int64_t w_at) {
    sums[static_cast<size_t>(x_at)] += static_cast<double>(dy[y_at]) * w[w_at];
  });
  store(sums, dx);
}

void conv2d_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw, float* dbias) {
  std::vector<double> sums(static_cast<size_t>(g.K * g.C * g.R * g.S), 0.0);
  for_each_term(g, [&](int64_t y_at, int64_t x_at, int64_t w_at) {
    sums[static_cast<size_t>(w_at)] += static_cast<double>(dy[y_at]) * x[x_at];
  });
  store(sums, dw);
  if (!dbias) return;
  std::vector<double> bias_sums(static_cast<size_t>(g.K), 0.0);
  for (int64_t i = 0; i < g.N * g.K * g.P * g.Q; ++i) bias_sums[static_cast<size_t>(i / (g.P * g.Q) % g.K)] += dy[i];
  store(bias_sums, dbias);
}

}  // namespace polyak::ref
