// 2-D convolution on the CPU: matrix products on our sgemm (engine/cpu/sgemm.h), one
// image per product or a few side by side, by the algorithms of engine/cpu/conv2d.h.
// This file chooses the algorithm for a geometry and runs it; the algorithms have files
// of their own: im2col (conv2d_im2col.cpp), shifted rows (conv2d_shifted.cpp, the filter
// gradients in conv2d_filter.cpp, the layout in conv2d_shifted_rows.h) and Winograd
// (winograd.cpp); conv2d_parts.h declares what they share.
//
// Shapes (NCHW, groups = 1, dilation = 1): input x (N,C,H,W), weight w (K,C,R,S),
// output y (N,K,P,Q) with P = (H + 2*pad_h - R) / stride_h + 1 (Q likewise), and
//
//   y[n,k,p,q] = bias[k] + sum_{c,r,s} w[k,c,r,s] * x[n, c, p*sh - ph + r, q*sw - pw + s]
//
// where x outside the image reads as zero (the padding).
//
// The images of the batch are spread over the thread team; each thread calls a
// single-threaded sgemm on its own images (in the shifted-rows forward and data
// gradient, the images each thread claims as it finishes its last: engine/parallel.h).
// The weights, the A of the forward and backward-data products, are packed once per
// call for all of them (SgemmPackedA). The filter gradient sums over images, so each
// task accumulates into its own partial dW and the partials are then added.
// Scratch buffers (the column matrices, the partials) are thread_local vectors that
// grow to the largest layer and stay: a training step reuses the same pages instead
// of faulting in fresh memory every call.
//
// The forward's epilogue (engine/kernels.h), y = act(y + residual), is applied where each
// image's output is written: in the copy out of the wide buffer (shifted rows), or right
// after the image's product while it is still in cache (im2col).
//
// The copies in and out of a product wait on L3 (a layer's activations do not fit in L2),
// so each product prefetches what the copies around it touch next, the next image in and
// this one's output, between the steps of its micro-kernels (SgemmPrefetch, sgemm.h).
#include <algorithm>
#include <cstdint>

#include "engine/cpu/conv2d.h"
#include "engine/cpu/conv2d_parts.h"
#include "engine/cpu/conv2d_shifted_rows.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/sgemm.h"

namespace polyak::cpu {

// The weights as the products' A, packed once per call for all images (not once per
// product): one buffer for the calling thread, reused by every call. The workers must
// reach it through a pointer or reference taken here (naming a thread_local inside the
// parallel body would give each worker its own).
SgemmPackedA& packed_weights(bool trans_a, int64_t M, int64_t K, const float* w) {
  thread_local SgemmPackedA packed;
  packed.pack(trans_a, M, K, w, trans_a ? M : K);
  return packed;
}

// ---- Winograd (winograd.cpp): the backward data as the forward of dy padded by
// R-1-ph, S-1-pw with the flipped filter, the same identity as shifted rows use.

namespace {

// With `add`, dx += the gradient: dx is also the forward's residual, read where it is
// written.
void winograd_backward_data(ConvAlgorithm algorithm, const Conv2dGeom& g, const float* dy, const float* w, float* dx,
                            bool add) {
  const Conv2dGeom adjoint{g.N, g.K, g.P, g.Q, g.C, g.R, g.S, 1, 1, g.R - 1 - g.pad_h, g.S - 1 - g.pad_w, g.H, g.W};
  const auto forward = algorithm == ConvAlgorithm::WinogradLanes ? winograd_lanes_forward : winograd_forward;
  forward(adjoint, dy, flipped_filters(g, w), nullptr, Epilogue{add ? dx : nullptr, false}, dx);
}

bool is_winograd(ConvAlgorithm algorithm) {
  return algorithm == ConvAlgorithm::Winograd || algorithm == ConvAlgorithm::WinogradLanes;
}

}  // namespace

bool conv_supports(ConvAlgorithm algorithm, const Conv2dGeom& g) {
  switch (algorithm) {
    case ConvAlgorithm::Im2col:
      return true;
    case ConvAlgorithm::ShiftedRows:
      return g.stride_h > 1 || g.stride_w > 1 || (g.pad_h < g.R && g.pad_w < g.S);
    case ConvAlgorithm::Winograd:
      return winograd_applies(g) && conv_supports(ConvAlgorithm::ShiftedRows, g);
    case ConvAlgorithm::WinogradLanes:
      return winograd_lanes_available() && conv_supports(ConvAlgorithm::Winograd, g);
  }
  return false;
}

ConvAlgorithm conv_algorithm(const Conv2dGeom& g) {
  // A 1x1 filter's column matrix is its image, or the image sampled with the stride,
  // which im2col multiplies in place; shifted rows would only add a copy
  // (measurements: docs/PERFORMANCE.md, "1x1 convolutions: im2col in place").
  // A strided 3x3 gains from shifted rows' phases, which make it stride-1 products
  // (measurements: docs/PERFORMANCE.md, "Stride 2: shifted rows on the image's phases").
  // A product with few columns is mostly overhead. Shifted rows put up to 4 images side
  // by side (PhaseAxis::row_layout), but a strided data gradient multiplies one image
  // at a time; below 64 columns per product im2col, which puts as many images side by
  // side as make 256 columns, wins (the filter gradient chooses for itself:
  // filter_gradient_on_shifted_rows; measurements: docs/PERFORMANCE.md,
  // "Small maps: shifted rows vs im2col").
  //
  // Winograd's F(2x2, 3x3) does 2.25 times fewer multiplications, but its transforms
  // are passes over memory of their own (16 values per 2x2 tile in and out), which pay
  // only with enough channels to multiply per transformed value and enough tiles per
  // image (measurements: docs/PERFORMANCE.md, "Winograd F(2x2, 3x3) vs shifted rows").
  //
  // On maps of 16x16 and smaller, 16 images in the lanes of AVX-512 vectors, with
  // F(4x4, 3x3)'s larger tiles, win over both (winograd_lanes.cpp has the method;
  // measurements: docs/PERFORMANCE.md, "Winograd: 16 images in the vector lanes" and
  // "Winograd lanes: F(4x4, 3x3)"). Not with 16 channels (the transforms' share grows as
  // the channels shrink), not where a row of tiles makes more than 4 MiB of transformed
  // patches (36 elements x channels x tiles x 16 images: a task holds at least one row;
  // up to 4 MiB, spilling L2, lanes still won everywhere measured), and not with a
  // quarter of the lanes or more left empty (small batches).
  const int64_t lanes = 16 * ((g.N + 15) / 16), row_of_tiles = 36 * std::max(g.C, g.K) * ((g.Q + 3) / 4) * 16 * 4;
  if (sgemm_active_isa() == SgemmIsa::Avx512 && conv_supports(ConvAlgorithm::WinogradLanes, g) && g.C >= 32 &&
      g.K >= 32 && g.P * g.Q <= 256 && row_of_tiles <= (4 << 20) && 4 * g.N >= 3 * lanes)
    return ConvAlgorithm::WinogradLanes;
  if (conv_supports(ConvAlgorithm::Winograd, g) && g.C >= 64 && g.K >= 64 && g.C * g.P * g.Q >= 16384)
    return ConvAlgorithm::Winograd;
  const bool strided = g.stride_h > 1 || g.stride_w > 1;
  const PhaseAxis::RowLayout layout = PhaseAxis(g.W, g.S, g.stride_w, g.pad_w).row_layout(g.P, strided ? 1 : g.N);
  const int64_t columns_per_product = g.P * layout.images * layout.slot;
  if (g.R * g.S > 1 && columns_per_product >= 64 && conv_supports(ConvAlgorithm::ShiftedRows, g))
    return ConvAlgorithm::ShiftedRows;
  return ConvAlgorithm::Im2col;
}

void conv2d_forward(ConvAlgorithm algorithm, const Conv2dGeom& g, const float* x, const float* w, const float* bias,
                    const Epilogue& epilogue, float* y) {
  if (algorithm == ConvAlgorithm::Winograd) {
    winograd_forward(g, x, w, bias, epilogue, y);
  } else if (algorithm == ConvAlgorithm::WinogradLanes) {
    winograd_lanes_forward(g, x, w, bias, epilogue, y);
  } else if (algorithm == ConvAlgorithm::ShiftedRows) {
    shifted_forward(g, x, w, bias, epilogue, y, nullptr);
  } else {
    im2col_forward(g, x, w, bias, epilogue, y);
  }
}

namespace {

// Whether the data gradient by `algorithm` is a stride-1 forward (Winograd's or shifted
// rows'), whose epilogue can add a residual as it writes.
bool backward_data_is_a_forward(ConvAlgorithm algorithm, const Conv2dGeom& g) {
  return is_winograd(algorithm) || (algorithm == ConvAlgorithm::ShiftedRows && g.stride_h == 1 && g.stride_w == 1);
}

}  // namespace

bool conv2d_forward_moments(ConvAlgorithm algorithm, const Conv2dGeom& g, const float* x, const float* w,
                            const float* bias, float* y, float* plane_moments) {
  if (algorithm != ConvAlgorithm::ShiftedRows) return false;
  shifted_forward(g, x, w, bias, Epilogue{}, y, plane_moments);
  return true;
}

bool conv2d_backward_data_in_place(ConvAlgorithm algorithm, const Conv2dGeom& g, float* dy_then_dx, const float* w) {
  const bool same_shape = g.C == g.K && g.H == g.P && g.W == g.Q;
  if (algorithm != ConvAlgorithm::ShiftedRows || g.stride_h != 1 || g.stride_w != 1 || !same_shape) return false;
  // Each product copies its images of dy into its padded buffer before it writes theirs
  // of dx, and no product reads another's images but to prefetch those it takes next.
  shifted_backward_data(g, dy_then_dx, w, dy_then_dx, false);
  return true;
}

bool conv2d_backward_data_add(ConvAlgorithm algorithm, const Conv2dGeom& g, const float* dy, const float* w,
                              float* dx) {
  if (!backward_data_is_a_forward(algorithm, g)) return false;
  if (is_winograd(algorithm)) {
    winograd_backward_data(algorithm, g, dy, w, dx, true);
  } else {
    shifted_backward_data(g, dy, w, dx, true);
  }
  return true;
}

void conv2d_backward_data(ConvAlgorithm algorithm, const Conv2dGeom& g, const float* dy, const float* w, float* dx) {
  if (is_winograd(algorithm)) {
    winograd_backward_data(algorithm, g, dy, w, dx, false);
  } else if (backward_data_is_a_forward(algorithm, g)) {
    shifted_backward_data(g, dy, w, dx, false);
  } else if (algorithm == ConvAlgorithm::ShiftedRows) {
    strided_backward_data(g, dy, w, dx);
  } else {
    im2col_backward_data(g, dy, w, dx);
  }
}

void conv2d_backward_filter(ConvAlgorithm algorithm, const Conv2dGeom& g, const float* x, const float* dy, float* dw,
                            float* dbias) {
  const bool shifted = (algorithm == ConvAlgorithm::ShiftedRows || is_winograd(algorithm)) &&
                       filter_gradient_on_shifted_rows(g);
  if (algorithm == ConvAlgorithm::WinogradLanes) {
    winograd_lanes_backward_filter(g, x, dy, dw);
  } else if (shifted && channels_last_pays(g)) {
    channels_last_backward_filter(g, x, dy, dw);
  } else if (shifted) {
    shifted_backward_filter(g, x, dy, dw);
  } else {
    im2col_backward_filter(g, x, dy, dw);
  }
  if (dbias) bias_gradient(g, dy, dbias);
}

}  // namespace polyak::cpu

namespace polyak {

void cpu::conv2d_forward_epilogue(const Conv2dGeom& g, const float* x, const float* w, const float* bias,
                                const Epilogue& epilogue, float* y) {
  cpu::conv2d_forward(cpu::conv_algorithm(g), g, x, w, bias, epilogue, y);
}

void cpu::conv2d_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx) {
  cpu::conv2d_backward_data(cpu::conv_algorithm(g), g, dy, w, dx);
}

bool cpu::conv2d_forward_moments(const Conv2dGeom& g, const float* x, const float* w, const float* bias,
                                        float* y, float* plane_moments) {
  return cpu::conv2d_forward_moments(cpu::conv_algorithm(g), g, x, w, bias, y, plane_moments);
}

bool cpu::conv2d_backward_data_in_place(const Conv2dGeom& g, float* dy_then_dx, const float* w) {
  return cpu::conv2d_backward_data_in_place(cpu::conv_algorithm(g), g, dy_then_dx, w);
}

bool cpu::conv2d_backward_data_add(const Conv2dGeom& g, const float* dy, const float* w, float* dx) {
  return cpu::conv2d_backward_data_add(cpu::conv_algorithm(g), g, dy, w, dx);
}

void cpu::conv2d_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw,
                                        float* dbias) {
  cpu::conv2d_backward_filter(cpu::conv_algorithm(g), g, x, dy, dw, dbias);
}

}  // namespace polyak
