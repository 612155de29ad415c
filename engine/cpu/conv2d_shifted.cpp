// Shifted rows (the method: conv2d_shifted_rows.h) for the forward and the data
// gradients: a stride-1 data gradient is the forward of dy with the flipped filter, a
// strided one a product per pair of phases of dx. The filter gradients, which sum over
// the images, are in conv2d_filter.cpp.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/cpu/conv2d.h"
#include "engine/cpu/conv2d_parts.h"
#include "engine/cpu/conv2d_shifted_rows.h"
#include "engine/cpu/moments.h"
#include "engine/cpu/padded_copy.h"
#include "engine/cpu/scratch.h"
#include "engine/cpu/sgemm.h"
#include "engine/parallel.h"

namespace polyak::cpu {

namespace {

// dst[2j] = even[j] for j < n_even, dst[2j + 1] = odd[j] for j < n_odd (n_odd is n_even
// or one less): the inverse of gathering the two phases of a row, which the compiler
// vectorises the same way.
void interleave_row(const float* even, const float* odd, int64_t n_even, int64_t n_odd, float* dst) {
  const int64_t both = std::min(n_even, n_odd);
  for (int64_t j = 0; j < both; ++j) {
    dst[2 * j] = even[j];
    dst[2 * j + 1] = odd[j];
  }
  if (n_even > both) dst[2 * both] = even[both];
}

}  // namespace

namespace {

// The loop the forward and the stride-1 data gradient share: the images of `in`
// (in_image floats each) are copied into the padded planes a few at a time, each group
// goes through one product with `weights` into `wide` (`channels` rows), and
// finish(wide, slot, n) writes image n (the group's slot-th) of `out` (out_image floats
// each). While a group computes, the next group's input, the group's `residual` (may be
// null) and its output are prefetched.
template <class Finish>
void shifted_products(const Conv2dGeom& g, const ShiftedRows& rows, const SgemmPackedA& weights, int64_t channels,
                      const float* in, int64_t in_image, const float* residual, float* out, int64_t out_image,
                      Finish&& finish) {
  parallel_chunks(g.N, rows.layout.images, gemm_cost(g), [&](auto&& next) {
    thread_local std::vector<float> image_buffer, wide_buffer;
    float* padded = rows.zeroed_planes(scratch(image_buffer, rows.padded_size()));
    float* wide = scratch(wide_buffer, channels * rows.columns());
    rows.for_each_product_ahead(next, [&](int64_t first, int64_t last, int64_t after_first, int64_t after_last) {
      for (int64_t n = first; n < last; ++n) rows.copy_interior(in + n * in_image, n - first, padded);
      SgemmPrefetch prefetch;
      prefetch.reads[0] = SgemmPrefetch::Range::floats(in + after_first * in_image, (after_last - after_first) * in_image);
      if (residual)
        prefetch.reads[1] = SgemmPrefetch::Range::floats(residual + first * out_image, (last - first) * out_image);
      prefetch.write = SgemmPrefetch::Range::floats(out + first * out_image, (last - first) * out_image);
      rows.product(weights, padded, wide, prefetch);
      for (int64_t n = first; n < last; ++n) finish(wide, n - first, n);
    });
  });
}

}  // namespace

// With plane_moments, also the kPlaneMoments of each plane of y, each computed right
// after the copy-out has written its plane (in L1).
void shifted_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias, const Epilogue& epilogue,
                     float* y, float* plane_moments) {
  const SgemmPackedA& weights = packed_weights(false, g.K, g.C * g.R * g.S, w);
  const ShiftedRows rows = forward_rows(g, g.N, &weights);
  const int64_t out = g.K * g.P * g.Q, plane = g.P * g.Q;
  shifted_products(g, rows, weights, g.K, x, g.C * g.H * g.W, epilogue.residual, y, out,
                   [&](const float* wide, int64_t slot, int64_t n) {
                     const int64_t at = n * out;
                     rows.drop_wrapped(g.K, wide, slot, bias, epilogue.residual ? epilogue.residual + at : nullptr,
                                       epilogue.relu, y + at);
                     if (plane_moments)
                       for (int64_t k = 0; k < g.K; ++k)
                         cpu::plane_moments(y + at + k * plane, plane, plane_moments + (n * g.K + k) * kPlaneMoments);
                   });
}

// The filter of the backward data as a forward (see conv2d_shifted_rows.h):
// w~[c, k, r, s] = w[k, c, R-1-r, S-1-s], C filters of K channels. In a buffer of the
// calling thread, valid until its next call.
const float* flipped_filters(const Conv2dGeom& g, const float* w) {
  const int64_t RS = g.R * g.S;
  thread_local std::vector<float> flipped_buffer;
  float* const flipped = scratch(flipped_buffer, g.C * g.K * RS);
  for (int64_t k = 0; k < g.K; ++k)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t i = 0; i < RS; ++i) flipped[(c * g.K + k) * RS + i] = w[(k * g.C + c) * RS + RS - 1 - i];
  return flipped;
}

// dx = the data gradient, or with `add` dx += it.
void shifted_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx, bool add) {
  const SgemmPackedA& weights = packed_weights(false, g.C, g.K * g.R * g.S, flipped_filters(g, w));
  const ShiftedRows rows = backward_data_rows(g, weights);
  const int64_t out = g.C * g.H * g.W;
  shifted_products(g, rows, weights, g.C, dy, g.K * g.P * g.Q, nullptr, dx, out,
                   [&](const float* wide, int64_t slot, int64_t n) {
                     float* const dx_image = dx + n * out;
                     rows.drop_wrapped(g.C, wide, slot, nullptr, add ? dx_image : nullptr, false, dx_image);
                   });
}

// ---- the data gradient of a strided convolution, on the phases of dx

namespace {

// One axis of it. Output p with tap r read input p*st - pd + r, so input h receives
// tap r from output p = (h + pd - r) / st where that divides exactly. Split h by its
// phase, h = i*st + a: phase a receives only the taps r = a + pd (mod st), tap r from
// output i + shift with shift = (a + pd - r) / st. Each phase of dx is then a stride-1
// correlation of dy with its own subset of the taps, each tap shifted by its own
// amount; all of them read one copy of dy padded by `before` in front, `padded` long.
struct AdjointAxis {
  struct Phase {
    int64_t length = 0;          // its inputs i*st + a < in
    std::vector<int64_t> taps;   // the taps it receives, ascending
    std::vector<int64_t> start;  // per tap: where in padded dy its output 0 reads
  };
  int64_t stride;
  int64_t before = 0, padded = 0;
  std::vector<Phase> phases;  // phase a at [a]

  AdjointAxis(int64_t in, int64_t out, int64_t taps, int64_t stride_, int64_t pad)
      : stride(stride_), phases(static_cast<size_t>(stride_)) {
    std::vector<std::vector<int64_t>> shifts(phases.size());
    for (int64_t a = 0; a < stride; ++a) {
      Phase& phase = phases[static_cast<size_t>(a)];
      phase.length = in > a ? (in - a + stride - 1) / stride : 0;
      for (int64_t r = 0; r < taps; ++r) {
        const int64_t offset = a + pad - r;  // = shift * stride
        if ((offset % stride + stride) % stride != 0) continue;
        phase.taps.push_back(r);
        shifts[static_cast<size_t>(a)].push_back(offset / stride);
        before = std::max(before, -offset / stride);
      }
    }
    padded = before + out;
    for (int64_t a = 0; a < stride; ++a) {
      Phase& phase = phases[static_cast<size_t>(a)];
      for (const int64_t shift : shifts[static_cast<size_t>(a)]) {
        phase.start.push_back(before + shift);
        padded = std::max(padded, before + shift + phase.length);  // every read of output i < length
      }
    }
  }
};

}  // namespace

// dx of a strided convolution: for each pair of phases (a, b) of its two axes, a
// shifted-rows product of the taps that pair receives,
//
//   dx[n, c, i*sh + a, j*sw + b] = sum_{k, r in taps(a), s in taps(b)} w[k, c, r, s] * dyp[k, start(r) + i, start(s) + j]
//
// on dy padded into (K, Hs, Ws) (the row index j runs over Ws columns, as in shifted
// rows, and those past the phase's length are dropped). The products together do the
// multiplications of the convolution once each, as the forward does; im2col would
// instead write a column matrix 9 times dy's size (for 3x3 taps), and col2im would add
// it back into dx with scalar strided stores. The phases beat im2col, by the most where
// the channels are few (measurements: docs/PERFORMANCE.md,
// "Stride 2: the data gradient on the phases of dx").
void strided_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx) {
  const AdjointAxis vertical(g.H, g.P, g.R, g.stride_h, g.pad_h), horizontal(g.W, g.Q, g.S, g.stride_w, g.pad_w);
  const int64_t Hs = vertical.padded, Ws = horizontal.padded, plane = Hs * Ws;
  const int64_t top = vertical.before, left = horizontal.before;
  // The last row's dropped columns read past the last plane, by less than a row.
  const int64_t tail = Ws, padded_size = g.K * plane + tail;
  const int64_t RS = g.R * g.S, pairs = g.stride_h * g.stride_w;

  // Per pair: the weights it multiplies, w[k, c, r, s] at row c and column (k, r, s),
  // packed, and the row offsets of its column matrix. Packed by the calling thread and
  // reached by the workers through these pointers.
  thread_local std::vector<std::vector<float>> weight_buffers;
  thread_local std::vector<SgemmPackedA> packed_buffers;
  thread_local std::vector<std::vector<int64_t>> offset_buffers;
  if (static_cast<int64_t>(packed_buffers.size()) < pairs) {
    weight_buffers.resize(static_cast<size_t>(pairs));
    packed_buffers.resize(static_cast<size_t>(pairs));
    offset_buffers.resize(static_cast<size_t>(pairs));
  }
  const auto pair_of = [&](int64_t a, int64_t b) { return static_cast<size_t>(a * g.stride_w + b); };
  for (int64_t a = 0; a < g.stride_h; ++a)
    for (int64_t b = 0; b < g.stride_w; ++b) {
      const AdjointAxis::Phase &rows = vertical.phases[static_cast<size_t>(a)],
                               &cols = horizontal.phases[static_cast<size_t>(b)];
      const int64_t taps = static_cast<int64_t>(rows.taps.size() * cols.taps.size()), depth = g.K * taps;
      std::vector<int64_t>& offsets = offset_buffers[pair_of(a, b)];
      offsets.clear();  // (left empty for a pair that receives no tap)
      if (depth == 0) continue;
      float* weights = scratch(weight_buffers[pair_of(a, b)], g.C * depth);
      for (int64_t k = 0; k < g.K; ++k)
        for (size_t ir = 0; ir < rows.taps.size(); ++ir)
          for (size_t is = 0; is < cols.taps.size(); ++is) {
            const int64_t column = static_cast<int64_t>(offsets.size());
            for (int64_t c = 0; c < g.C; ++c)
              weights[c * depth + column] = w[(k * g.C + c) * RS + rows.taps[ir] * g.S + cols.taps[is]];
            offsets.push_back(k * plane + rows.start[ir] * Ws + cols.start[is]);
          }
      packed_buffers[pair_of(a, b)].pack(false, g.C, depth, weights, depth);
    }
  const SgemmPackedA* const packed = packed_buffers.data();
  const std::vector<int64_t>* const offsets = offset_buffers.data();

  parallel_chunks(g.N, 1, gemm_cost(g), [&](auto&& next) {
    thread_local std::vector<float> image_buffer, wide_buffer;
    float* dyp = scratch(image_buffer, padded_size);
    const int64_t wide_size = g.C * vertical.phases[0].length * Ws;  // phase 0 is the longest
    float* wide = scratch(wide_buffer, wide_size * g.stride_w);       // one per column phase
    std::fill(dyp, dyp + padded_size, 0.0f);
    for (int64_t begin, end; next(begin, end);) {
      for (int64_t n = begin; n < end; ++n) {
        copy_interior(g.K, g.P, g.Q, dy + n * g.K * g.P * g.Q, Hs, Ws, top, left, dyp);
        float* dxn = dx + n * g.C * g.H * g.W;
        for (int64_t a = 0; a < g.stride_h; ++a) {
          const int64_t length = vertical.phases[static_cast<size_t>(a)].length, columns = length * Ws;
          // The row phase's products, one per column phase, then their rows interleaved
          // into dx (zeros for a pair that receives no tap).
          for (int64_t b = 0; b < g.stride_w; ++b) {
            float* out = wide + b * wide_size;
            if (offsets[pair_of(a, b)].empty()) {
              std::fill(out, out + g.C * columns, 0.0f);
            } else {
              sgemm_packed_a(packed[pair_of(a, b)], false, columns, 1.0f, dyp, 0, offsets[pair_of(a, b)].data(), 0.0f,
                             out, columns);
            }
          }
          for (int64_t c = 0; c < g.C; ++c)
            for (int64_t i = 0; i < length; ++i) {
              float* row = dxn + (c * g.H + i * g.stride_h + a) * g.W;
              const float* from = wide + (c * length + i) * Ws;
              if (g.stride_w == 2) {
                interleave_row(from, from + wide_size, horizontal.phases[0].length, horizontal.phases[1].length, row);
              } else {
                for (int64_t b = 0; b < g.stride_w; ++b)
                  for (int64_t j = 0; j < horizontal.phases[static_cast<size_t>(b)].length; ++j)
                    row[j * g.stride_w + b] = from[b * wide_size + j];
              }
            }
        }
      }
    }
  });
}

}  // namespace polyak::cpu
