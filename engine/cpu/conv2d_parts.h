// What the files of the CPU convolution share (internal; the public functions are in
// engine/cpu/conv2d.h): each algorithm's kernels, which conv2d.cpp dispatches to, and
// the helpers that more than one of them uses. conv2d.cpp has the algorithm choice and
// the entry points, conv2d_im2col.cpp im2col, conv2d_shifted.cpp the shifted-rows
// forward and data gradients, conv2d_filter.cpp the filter gradients on shifted rows;
// conv2d_shifted_rows.h the shifted-rows layout, which the last three use.
#pragma once

#include <algorithm>
#include <cstdint>

#include "engine/cpu/conv2d.h"
#include "engine/cpu/partial_sums.h"
#include "engine/cpu/sgemm.h"

namespace polyak::cpu {

// ---- helpers (conv2d.cpp)

// The weights as the products' A, packed once per call in the calling thread's buffer.
SgemmPackedA& packed_weights(bool trans_a, int64_t M, int64_t K, const float* w);
// One image's multiply-adds, the work per image that parallel_for is given.
inline int64_t gemm_cost(const Conv2dGeom& g) { return std::max<int64_t>(1, g.K * g.C * g.R * g.S * g.P * g.Q); }

// dw = sum over images of their filter gradients (K x CRS each): accumulate(n_begin,
// n_end, acc) overwrites acc with the sum over images [n_begin, n_end).
template <class Accumulate>
void sum_over_images(const Conv2dGeom& g, float* dw, Accumulate&& accumulate) {
  sum_in_slots(g.N, g.K * g.C * g.R * g.S, gemm_cost(g), dw, accumulate);
}

// ---- im2col (conv2d_im2col.cpp)

// y = act(conv(x, w) + bias + residual), by im2col + sgemm.
void im2col_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias, const Epilogue& epilogue,
                    float* y);
// dx = the data gradient, by W^T * dy and col2im.
void im2col_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx);
// dw = the filter gradient, by dy * col^T summed over the images.
void im2col_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw);

// ---- shifted rows: forward and data gradient (conv2d_shifted.cpp)

// y = act(conv(x, w) + bias + residual); with plane_moments, also each plane's moments.
void shifted_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias, const Epilogue& epilogue,
                     float* y, float* plane_moments);
// The filter of the data gradient as a forward's, flipped, in the calling thread's buffer.
const float* flipped_filters(const Conv2dGeom& g, const float* w);
// dx = the data gradient of a stride-1 convolution, or with `add` dx += it.
void shifted_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx, bool add);
// dx = the data gradient of a strided convolution, on the phases of dx.
void strided_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx);

// ---- the filter gradient (conv2d_filter.cpp)

// dbias[k] = sum over n, p, q of dy[n, k, p, q].
void bias_gradient(const Conv2dGeom& g, const float* dy, float* dbias);
// Whether the filter gradient goes on shifted rows (else im2col's).
bool filter_gradient_on_shifted_rows(const Conv2dGeom& g);
// Whether it pays to take it on a channels-last copy of the image instead.
bool channels_last_pays(const Conv2dGeom& g);
// dw = the filter gradient on shifted rows.
void shifted_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw);
// dw = the filter gradient of a stride-1 convolution, on a channels-last copy of the image.
void channels_last_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw);

}  // namespace polyak::cpu
