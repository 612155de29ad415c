// im2col: the convolution as products on an explicit column matrix, one image per
// product or a few side by side. It takes every geometry (the reference that the tests
// hold the other algorithms against), and the backend uses it where they do not apply
// or do not pay (conv_algorithm in conv2d.cpp).
//
// im2col turns the convolution's sum (conv2d.cpp) into a matrix product. For one
// image, the column matrix col has one row per filter tap (c,r,s) and one column per
// output pixel (p,q):
//
//   col[(c*R + r)*S + s, p*Q + q] = x[c, p*sh - ph + r, q*sw - pw + s]   (0 if padding)
//
// so col is (C*R*S) x (P*Q), and the weight, read as a (K) x (C*R*S) matrix, gives
// the three products of a training step, per image n:
//
//   forward          y[n]  (K x PQ)    = W     (K x CRS)  * col  (CRS x PQ)
//   backward data    dcol  (CRS x PQ)  = W^T   (CRS x K)  * dy[n] (K x PQ),
//                    then col2im scatters-adds dcol back into dx[n] (C x H x W),
//                    the adjoint of im2col (a pixel read by several taps sums them)
//   backward filter  dW    (K x CRS)  += dy[n] (K x PQ)   * col^T (PQ x CRS)
//                    dbias[k] = sum over n, p, q of dy[n,k,p,q]
//
// A 1x1 convolution with stride 1 and no padding needs no im2col: col is the image
// itself, x[n] read as a (C) x (H*W) matrix.
//
// On small maps one image gives a product few columns (16 at 4x4), so several images go
// side by side into one column matrix (C*R*S x count*P*Q), enough for 256 columns
// (images_per_product).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "engine/cpu/conv2d.h"
#include "engine/cpu/conv2d_parts.h"
#include "engine/cpu/epilogue.h"
#include "engine/cpu/padded_copy.h"
#include "engine/cpu/scratch.h"
#include "engine/cpu/sgemm.h"
#include "engine/parallel.h"

namespace polyak::cpu {

namespace {

bool is_pointwise(const Conv2dGeom& g) {
  return g.R == 1 && g.S == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0;
}

// The output columns q in [lo, hi) whose input column q*stride - pad + s lies inside [0, W).
void valid_range(int64_t Q, int64_t W, int64_t stride, int64_t pad, int64_t s, int64_t& lo, int64_t& hi) {
  const int64_t first = pad - s;  // need q*stride >= first
  lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  const int64_t last = W - 1 + pad - s;  // need q*stride <= last
  hi = last < 0 ? 0 : std::min(Q, last / stride + 1);
  lo = std::min(lo, hi);
}

// col (C*R*S, P*Q) from one image x (C, H, W), its rows ld floats apart.
void im2col(const Conv2dGeom& g, const float* x, float* col, int64_t ld) {
  for (int64_t c = 0; c < g.C; ++c) {
    const float* xc = x + c * g.H * g.W;
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        float* row = col + ((c * g.R + r) * g.S + s) * ld;
        int64_t q_lo, q_hi;
        valid_range(g.Q, g.W, g.stride_w, g.pad_w, s, q_lo, q_hi);
        for (int64_t p = 0; p < g.P; ++p) {
          float* out = row + p * g.Q;
          const int64_t ih = p * g.stride_h - g.pad_h + r;
          if (ih < 0 || ih >= g.H) {
            std::memset(out, 0, sizeof(float) * g.Q);
            continue;
          }
          const float* in = xc + ih * g.W - g.pad_w + s;  // in[q*stride] is x[c, ih, q*stride - pad + s]
          for (int64_t q = 0; q < q_lo; ++q) out[q] = 0.0f;
          if (g.stride_w == 1) {
            std::memcpy(out + q_lo, in + q_lo, sizeof(float) * (q_hi - q_lo));
          } else {
            for (int64_t q = q_lo; q < q_hi; ++q) out[q] = in[q * g.stride_w];
          }
          for (int64_t q = q_hi; q < g.Q; ++q) out[q] = 0.0f;
        }
      }
    }
  }
}

// dx (C, H, W) = col2im(dcol), dcol's rows ld floats apart: the adjoint of im2col;
// writes dx in full.
void col2im(const Conv2dGeom& g, const float* col, int64_t ld, float* dx) {
  std::memset(dx, 0, sizeof(float) * g.C * g.H * g.W);
  for (int64_t c = 0; c < g.C; ++c) {
    float* dxc = dx + c * g.H * g.W;
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        const float* row = col + ((c * g.R + r) * g.S + s) * ld;
        int64_t q_lo, q_hi;
        valid_range(g.Q, g.W, g.stride_w, g.pad_w, s, q_lo, q_hi);
        for (int64_t p = 0; p < g.P; ++p) {
          const int64_t ih = p * g.stride_h - g.pad_h + r;
          if (ih < 0 || ih >= g.H) continue;
          const float* in = row + p * g.Q;
          float* out = dxc + ih * g.W - g.pad_w + s;
          if (g.stride_w == 1) {
            for (int64_t q = q_lo; q < q_hi; ++q) out[q] += in[q];
          } else {
            for (int64_t q = q_lo; q < q_hi; ++q) out[q * g.stride_w] += in[q];
          }
        }
      }
    }
  }
}

// Copies `count` blocks of rows x len floats: row r of block i goes from
// src + i * src_block + r * src_row to dst + i * dst_block + r * dst_row. Images of a
// batch (block rows * len, row len) to side by side (block len, row count * len), or back.
void copy_blocks(const float* src, int64_t src_block, int64_t src_row, float* dst, int64_t dst_block,
                 int64_t dst_row, int64_t count, int64_t rows, int64_t len) {
  for (int64_t i = 0; i < count; ++i)
    for (int64_t r = 0; r < rows; ++r) copy_row(src + i * src_block + r * src_row, len, dst + i * dst_block + r * dst_row);
}

// Images per product on the im2col path. One image of a small map gives a product few
// columns (16 at 4x4): a third of a tile's width (48 on AVX-512), and little for the
// filter gradient to share its packing of B with. Images side by side make at least
// kMinColumns columns.
constexpr int64_t kMinColumns = 256;
int64_t images_per_product(const Conv2dGeom& g) {
  const int64_t PQ = std::max<int64_t>(1, g.P * g.Q);
  return std::clamp<int64_t>((kMinColumns + PQ - 1) / PQ, 1, std::max<int64_t>(1, g.N));
}

// count images of rows x len floats, the first at `first` and the rest after it, with
// their rows side by side (rows x count*len): the images themselves when count is 1.
const float* side_by_side(const float* first, int64_t count, int64_t rows, int64_t len, std::vector<float>& buffer) {
  if (count == 1) return first;
  float* wide = scratch(buffer, rows * count * len);
  copy_blocks(first, rows * len, len, wide, len, count * len, count, rows, len);
  return wide;
}

// Images n0 .. n0 + count - 1 of a batch (C, H, W each) as one column matrix with their
// columns side by side (C*R*S x count*P*Q); a pointwise convolution's images are their
// own column matrices: with one image, that image itself.
const float* columns_of(const Conv2dGeom& g, const float* x, int64_t n0, int64_t count, std::vector<float>& buffer) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q, width = count * PQ;
  const float* first = x + n0 * g.C * HW;
  if (is_pointwise(g)) return side_by_side(first, count, g.C, HW, buffer);
  float* col = scratch(buffer, g.C * g.R * g.S * width);
  for (int64_t i = 0; i < count; ++i) im2col(g, first + i * g.C * HW, col + i * PQ, width);
  return col;
}

}  // namespace

void im2col_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias, const Epilogue& epilogue,
                    float* y) {
  const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q;
  const int64_t per_product = images_per_product(g), products = (g.N + per_product - 1) / per_product;
  const bool tail = bias || epilogue.residual || epilogue.relu;
  const SgemmPackedA& weights = packed_weights(false, g.K, CRS, w);
  parallel_for(products, gemm_cost(g) * per_product, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> col_buffer, out_buffer;
    for (int64_t product = begin; product < end; ++product) {
      const int64_t n0 = product * per_product, count = std::min(per_product, g.N - n0), width = count * PQ;
      const float* cols = columns_of(g, x, n0, count, col_buffer);
      // One image writes y[n0] directly; several write side by side, then to their places.
      float* out = count == 1 ? y + n0 * g.K * PQ : scratch(out_buffer, g.K * width);
      sgemm_packed_a(weights, false, width, 1.0f, cols, width, nullptr, 0.0f, out, width);
      if (count == 1 && !tail) continue;
      for (int64_t i = 0; i < count; ++i)  // y = act(product + bias + residual), per output row
        for (int64_t k = 0; k < g.K; ++k) {
          const int64_t at = ((n0 + i) * g.K + k) * PQ;
          affine_epilogue(PQ, out + k * width + i * PQ, 1.0f, bias ? bias[k] : 0.0f,
                          epilogue.residual ? epilogue.residual + at : nullptr, epilogue.relu, y + at);
        }
    }
  });
}

void im2col_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx) {
  const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q, HW = g.H * g.W;
  const bool pointwise = is_pointwise(g);
  const int64_t per_product = images_per_product(g), products = (g.N + per_product - 1) / per_product;
  const SgemmPackedA& weights = packed_weights(true, CRS, g.K, w);  // W^T
  parallel_for(products, gemm_cost(g) * per_product, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> dy_buffer, col_buffer;
    for (int64_t product = begin; product < end; ++product) {
      const int64_t n0 = product * per_product, count = std::min(per_product, g.N - n0), width = count * PQ;
      const float* dys = side_by_side(dy + n0 * g.K * PQ, count, g.K, PQ, dy_buffer);  // K x count*PQ
      // dcol = W^T * dy; for a pointwise conv dcol is dx itself (side by side).
      float* dxn = dx + n0 * g.C * HW;
      float* dcol = pointwise && count == 1 ? dxn : scratch(col_buffer, CRS * width);
      sgemm_packed_a(weights, false, width, 1.0f, dys, width, nullptr, 0.0f, dcol, width);
      if (pointwise) {
        if (count > 1) copy_blocks(dcol, PQ, width, dxn, g.C * HW, HW, count, g.C, HW);
      } else {
        for (int64_t i = 0; i < count; ++i) col2im(g, dcol + i * PQ, width, dxn + i * g.C * HW);
      }
    }
  });
}

void im2col_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw) {
  const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q;
  const int64_t per_product = images_per_product(g);
  sum_over_images(g, dw, [&](int64_t n_begin, int64_t n_end, float* acc) {
    thread_local std::vector<float> dy_buffer, col_buffer;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += per_product) {
      const int64_t count = std::min(per_product, n_end - n0), width = count * PQ;
      const float* cols = columns_of(g, x, n0, count, col_buffer);
      const float* dys = side_by_side(dy + n0 * g.K * PQ, count, g.K, PQ, dy_buffer);  // K x count*PQ
      // acc (K x CRS) (+)= dy (K x count*PQ) * col^T (count*PQ x CRS)
      sgemm(false, true, g.K, CRS, width, 1.0f, dys, width, cols, width, n0 == n_begin ? 0.0f : 1.0f, acc, CRS);
    }
  });
}

}  // namespace polyak::cpu
