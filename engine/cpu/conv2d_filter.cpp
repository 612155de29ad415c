// The filter gradients on shifted rows (conv2d_shifted_rows.h), sums over the images:
// on the shifted rows themselves, or on a channels-last copy of the image where that
// pays; and the bias gradient. im2col's filter gradient is in conv2d_im2col.cpp.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/cpu/conv2d.h"
#include "engine/cpu/conv2d_parts.h"
#include "engine/cpu/conv2d_shifted_rows.h"
#include "engine/cpu/padded_copy.h"
#include "engine/cpu/scratch.h"
#include "engine/cpu/sgemm.h"
#include "engine/parallel.h"

namespace polyak::cpu {

// dbias[k] = sum over n, p, q of dy[n, k, p, q]
void bias_gradient(const Conv2dGeom& g, const float* dy, float* dbias) {
  const int64_t PQ = g.P * g.Q;
  parallel_for(g.K, g.N * PQ, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      double total = 0.0;
      for (int64_t n = 0; n < g.N; ++n) {
        const float* row = dy + (n * g.K + k) * PQ;
        float partial = 0.0f;
        for (int64_t i = 0; i < PQ; ++i) partial += row[i];
        total += partial;
      }
      dbias[k] = static_cast<float>(total);
    }
  });
}

namespace {

// dy' (K x P*width): image n's dy spread onto rows `width` floats apart. The columns
// q >= Q must hold zeros, which keep the wrapped-around image values they meet out of
// the sum; like a padded image's border, they are written once (every image writes the
// same places), when the buffer is set up.
void spread_output(const Conv2dGeom& g, const float* dy, int64_t n, int64_t width, float* spread) {
  const float* dyn = dy + n * g.K * g.P * g.Q;
  for (int64_t row = 0; row < g.K * g.P; ++row) copy_row(dyn + row * g.Q, g.Q, spread + row * width);
}

}  // namespace

void shifted_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw) {
  const ShiftedRows rows = forward_rows(g, 1);
  const int64_t CRS = g.C * g.R * g.S, columns = rows.columns();
  sum_over_images(g, dw, [&](int64_t n_begin, int64_t n_end, float* acc) {
    thread_local std::vector<float> image_buffer, spread_buffer;
    float* xp = rows.zeroed_planes(scratch(image_buffer, rows.padded_size()));
    float* spread = scratch(spread_buffer, g.K * columns);
    std::fill(spread, spread + g.K * columns, 0.0f);
    for (int64_t n = n_begin; n < n_end; ++n) {
      rows.copy_interior(x + n * g.C * g.H * g.W, 0, xp);
      spread_output(g, dy, n, rows.Ws, spread);
      // acc (K x CRS) (+)= dy' (K x P*Ws) * col^T (P*Ws x CRS)
      sgemm_indirect_b(false, true, g.K, CRS, columns, 1.0f, spread, columns, xp, rows.offsets.data(),
                       n == n_begin ? 0.0f : 1.0f, acc, CRS);
    }
  });
}

// The filter gradient of a stride-1 convolution on a channels-last copy of the image.
// With xc the zero-padded image stored channels last, xc[(h * Wp + w) * C + c], and dy'
// (K x P*Wp) as for shifted rows,
//
//   dW[k, c, r, s] = sum_j dy'[k, j] * xc[(j + r*Wp + s) * C + c]
//
// For one r, the S*C values (s, c) at pixel j + r*Wp lie side by side: they are row j of
// a matrix B_r (P*Wp x S*C) whose rows are C floats apart (they overlap), which the
// product reads where it lies:
//
//   dW_r (K x S*C) (+)= dy' (K x P*Wp) * B_r,   r < R, with dy' packed once per image.
//
// The sum runs along the pixels, which NCHW stores contiguously in both operands, and
// a product needs one operand laid across it. Shifted rows transpose the column matrix
// for that (R*S rows per channel) or take dot products that end in lane sums; here only
// the image itself is transposed, C*H*W floats. dW comes out in (K, R, S, C) order and
// is put in (K, C, R, S) order at the end. It pays where the products are wide enough:
// with 3 channels, S*C = 9 columns per product, it is slower than shifted rows
// (channels_last_pays; measurements: docs/PERFORMANCE.md, "Filter gradient: channels-last rows").
bool channels_last_pays(const Conv2dGeom& g) { return g.stride_h == 1 && g.stride_w == 1 && g.S * g.C >= 32; }

// The filter gradients on shifted rows multiply one image per product (summing over its
// P * Ws columns); on maps that give fewer than 64, im2col's gradient, several images
// side by side, is faster, and shifted rows are from 64 on
// (measurements: docs/PERFORMANCE.md, "Filter gradient: im2col on small maps").
bool filter_gradient_on_shifted_rows(const Conv2dGeom& g) {
  return g.P * PhaseAxis(g.W, g.S, g.stride_w, g.pad_w).row_layout(g.P, 1).slot >= 64;
}

namespace {

// With row edges (sgemm_packed_a's taps along B's columns; AVX-512, a filter 3 wide
// with one column of padding, whole vectors of channels), the rows hold no padding
// pixels: the products read one pixel to the left of each and zero the taps across an
// image row's edge. With one image per row, dy' is then dy itself, packed in place
// (measurements: docs/PERFORMANCE.md, "Row edges: rows without padding columns").
bool filter_gradient_takes_edges(const Conv2dGeom& g) {
  return g.S == 3 && g.pad_w == 1 && g.stride_w == 1 && g.stride_h == 1 &&
         sgemm_row_edges_supported(sgemm_active_isa(), g.W, g.S * g.C, g.C);
}

}  // namespace

void channels_last_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw) {
  // The padded images' pixels laid out as shifted rows lay out a channel (rows Wp
  // pixels long, the padding shared between rows where it can be, small maps side by
  // side: one product then sums over the pixels of several images).
  const bool edges = filter_gradient_takes_edges(g);
  const ShiftedRows layout(g.C, g.H, g.W, g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.N, edges);
  const int64_t Wp = layout.Ws, slot = layout.layout.slot, images = layout.layout.images;
  const int64_t SC = g.S * g.C, RSC = g.R * SC, columns = layout.columns();
  const int64_t top = layout.vertical.before, left = layout.left;
  // With edges, a pixel's margin before the rows (the products start one pixel early)
  // and after them.
  const int64_t margin = edges ? g.C : 0;
  const int64_t image_floats = margin + (layout.Hs * layout.Ws + layout.tail()) * g.C + margin;
  const int64_t image = g.C * g.H * g.W, out = g.K * g.P * g.Q;
  const bool dy_in_place = edges && images == 1;  // dy' is dy: K rows of P * Q
  thread_local std::vector<float> reordered_buffer;
  float* const reordered = scratch(reordered_buffer, g.K * RSC);  // (K, R, S, C)
  sum_over_images(g, reordered, [&](int64_t n_begin, int64_t n_end, float* acc) {
    thread_local std::vector<float> image_buffer, spread_buffer;
    thread_local SgemmPackedA packed_spread;
    float* const xc_buffer = scratch(image_buffer, image_floats);
    std::fill(xc_buffer, xc_buffer + image_floats, 0.0f);
    float* const xc = xc_buffer + margin;
    float* spread = dy_in_place ? nullptr : scratch(spread_buffer, g.K * columns);
    if (spread) std::fill(spread, spread + g.K * columns, 0.0f);
    layout.for_each_product(n_begin, n_end, [&](int64_t first, int64_t last) {
      // The next product's images and output gradients, prefetched a third during each
      // of this one's R products.
      const int64_t after = std::min(n_end, last + images) - last;
      const auto next_x = SgemmPrefetch::Range::floats(x + last * image, after * image);
      const auto next_dy = SgemmPrefetch::Range::floats(dy + last * out, after * out);
      for (int64_t n = first; n < last; ++n) {
        const float* xn = x + n * image;
        const int64_t at = (n - first) * slot + left;
        for (int64_t h = 0; h < g.H; ++h)  // row h of every channel (C x W) into pixels (W x C)
          transpose(g.C, std::min(g.W, slot - left), xn + h * g.W, g.H * g.W, xc + ((h + top) * Wp + at) * g.C, g.C);
        if (spread) spread_output(g, dy, n, Wp, spread + (n - first) * slot);
      }
      // A last product short of images: the slots to spare must add nothing (they
      // hold an earlier image, or zeros).
      for (int64_t i = last - first; i < images; ++i)
        for (int64_t row = 0; row < g.K * g.P; ++row) std::fill_n(spread + row * Wp + i * slot, g.Q, 0.0f);
      if (dy_in_place) {
        packed_spread.pack_on_this_thread(false, g.K, columns, dy + first * out, columns);
      } else {
        packed_spread.pack_on_this_thread(false, g.K, columns, spread, columns);
      }
      for (int64_t r = 0; r < g.R; ++r) {
        SgemmPrefetch prefetch;
        prefetch.reads[0] = next_x.part(r, g.R), prefetch.reads[1] = next_dy.part(r, g.R);
        // Row j of B_r: the S * C values of pixels j + r * Wp - 1 .. + 1 with edges (tap s
        // reads pixel s - 1 off), of the padded pixels j + r * Wp + s without.
        const float* b = xc + (r * Wp - (edges ? 1 : 0)) * g.C;
        sgemm_packed_a(packed_spread, false, SC, 1.0f, b, g.C, nullptr, first == n_begin ? 0.0f : 1.0f, acc + r * SC,
                       RSC, prefetch, edges ? g.W : 0, edges ? g.C : 0);
      }
    });
  });
  parallel_for(g.K, RSC, [&](int64_t k_begin, int64_t k_end) {
    for (int64_t k = k_begin; k < k_end; ++k)
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t rs = 0; rs < g.R * g.S; ++rs)
          dw[(k * g.C + c) * g.R * g.S + rs] = reordered[k * RSC + rs * g.C + c];
  });
}

}  // namespace polyak::cpu
