// The layout of shifted rows (an implicit column matrix on a zero-padded image), in a
// header because three of the convolution's files use it: the forward and data
// gradients (conv2d_shifted.cpp), the filter gradients (conv2d_filter.cpp) and the
// algorithm choice (conv2d.cpp), which sizes their products. The method:
//
// Shifted rows: im2col without the column matrix. For stride 1, pad the image with
// zeros into xp (C, Hp, Wp), Hp = H + 2 ph, Wp = W + 2 pw, and number the output pixels
// on the padded width, j = p * Wp + q. Then
//
//   col[(c, r, s), j] = xp[c, p + r, q + s] = xp[c * Hp * Wp + r * Wp + s + j]
//
// so row (c, r, s) of the column matrix is xp itself, shifted by c*Hp*Wp + r*Wp + s: the
// product reads it through a table of row offsets (sgemm_indirect_b), and its packing of
// B is the only copy. The columns q >= Q of each output row wrap into the next row of
// xp; they are computed and dropped ((Wp - Q) / Wp of the work: 6% at 32x32, 20% at 8x8;
// rows can share their padding, which halves that where it fits whole vectors, and
// small maps put two images side by side in each row: PhaseAxis::row_layout). Where the
// kernels have lane masks, a 3x3 filter's rows need no padding columns at all: the
// product zeroes what they would hold as it reads (rows_take_edges).
//
//   forward          y'[n] (K x P*Wp)  = W (K x CRS) * col, then y[n] = the columns q < Q
//   backward data    a stride-1 convolution is its own adjoint up to flipping the filter:
//                    dx[n, c, h, w] = sum_{k,r,s} w[k, c, R-1-r, S-1-s] * dyp[k, h + r, w + s]
//                    on dy padded by R-1-ph rows and S-1-pw columns: the forward of dy with
//                    the filter w~[c, k, r, s] = w[k, c, R-1-r, S-1-s] (needs ph < R, pw < S)
//   backward filter  dW (K x CRS) += dy' (K x P*Wp) * col^T, where dy' is dy[n] spread onto
//                    the padded width with zeros in the dropped columns
//
// A stride st > 1 becomes stride 1 on the image's phases. Output row p with tap r reads
// input row p*st - ph + r; write r - ph = shift*st + phase (0 <= phase < st, floor
// division). That row is row p + shift of the phase's own rows phase, phase + st, ...:
// a stride-1 shift. So xp holds, per channel, one padded plane for each pair of row and
// column phases that some tap reads (4 for a 3x3 filter with stride 2, only the phase 0
// for a 1x1), and row (c, r, s) of the column matrix is the plane of (c, r's phase,
// s's phase) shifted by r's and s's shifts: the same product, and the same filter
// gradient, on an image gathered with stride st instead of copied (its P x Ws columns
// waste (Ws - Q) / Ws, 6% for 3x3 stride 2 onto 16x16). The data gradient of a strided
// convolution is not a strided convolution: each phase of dx receives its own subset of
// the taps, one shifted-rows product per pair of phases (strided_backward_data).
#pragma once

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "engine/cpu/conv2d.h"
#include "engine/cpu/epilogue.h"
#include "engine/cpu/padded_copy.h"
#include "engine/cpu/sgemm.h"

namespace polyak::cpu {

// dst[i] = src[i * stride] for i < n. With the stride a constant the compiler loads
// whole vectors and permutes them (two loads and one vpermt2ps per 16 floats with
// AVX-512 at stride 2); with a variable stride it makes one scalar load per float, which
// takes nearly as long as a strided forward's products
// (measurements: docs/PERFORMANCE.md, "Stride 2: gathering with a constant stride").
template <int64_t stride>
void gather_row(const float* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i * stride];
}

// One axis of a shifted-rows image (see the top of the file): for a stride st and
// padding pd, output index p with filter tap r reads input index p*st - pd + r, which is
// split by floor division into a phase and a shift, r - pd = shift*st + phase with
// 0 <= phase < st, so that it is element p + shift of the phase's own sequence
// (input indices phase, phase + st, phase + 2 st, ...). A phase is stored padded:
// element i of it is input (i - before) * st + phase, zero outside the input, and
// `padded` elements long, enough for every p < out and every shift.
struct PhaseAxis {
  int64_t in, stride;
  int64_t out;            // output size
  int64_t before;         // the elements before phase index 0 (from the most negative shift)
  int64_t padded;         // a padded phase's length
  std::vector<int64_t> phases;     // the phases some tap reads, ascending
  std::vector<int64_t> tap_phase;  // per tap: its phase's place in `phases`
  std::vector<int64_t> tap_start;  // per tap: the element of its phase that output 0 reads

  PhaseAxis(int64_t in_, int64_t taps, int64_t stride_, int64_t pad) : in(in_), stride(stride_) {
    out = (in + 2 * pad - taps) / stride + 1;
    const auto phase_of = [this](int64_t t) { return (t % stride + stride) % stride; };
    const auto shift_of = [&](int64_t t) { return (t - phase_of(t)) / stride; };
    const int64_t lowest = shift_of(-pad), highest = shift_of(taps - 1 - pad);  // shifts grow with r
    before = -lowest;
    padded = out + highest - lowest;
    std::vector<char> used(static_cast<size_t>(stride), 0);
    for (int64_t r = 0; r < taps; ++r) used[static_cast<size_t>(phase_of(r - pad))] = 1;
    for (int64_t ph = 0; ph < stride; ++ph)
      if (used[static_cast<size_t>(ph)]) phases.push_back(ph);
    for (int64_t r = 0; r < taps; ++r) {
      const auto at = std::find(phases.begin(), phases.end(), phase_of(r - pad));
      tap_phase.push_back(at - phases.begin());
      tap_start.push_back(shift_of(r - pad) - lowest);
    }
  }
  int64_t count() const { return static_cast<int64_t>(phases.size()); }

  // How `rows` rows of a phase are stored end to end: `images` images side by side in
  // each row, each in a slot of `slot` elements.
  //
  // A read past the end of a slot lands in the next slot, or the next row's first,
  // whose first `before` elements are padding (zero in every slot): they can double as
  // this slot's trailing padding, which takes it from `padded` down to as little as
  // out + span - before (W + 1 instead of W + 2 for a 3x3 filter with padding 1), as
  // long as every element holding input that an output reads stays inside the slot.
  //
  // Of the layouts that work, the one whose rows * images * slot columns make the fewest
  // vectors of 16 floats per image; then fewer images, whole vectors (the product reads
  // a last panel of whole vectors in place), a shorter slot. One image in rows of 33 at
  // 32x32 (1056 columns, 3% fewer than 1088), of 17 at 16x16 (272 against 288), but
  // two images in rows of 2 x 9 at 8x8: 144 columns, 9 vectors, where one image takes 5
  // (80 columns, as 72 would be 4.5 vectors).
  struct RowLayout {
    int64_t images, slot;
  };
  RowLayout row_layout(int64_t rows, int64_t max_images) const {
    const int64_t span = padded - out;  // the largest tap_start
    int64_t data_end = 0;               // one past the last element holding input that an output reads
    for (const int64_t ph : phases)
      data_end = std::max(data_end, std::min(out + span, before + (in - ph + stride - 1) / stride));
    const int64_t shortest = std::max({out, out + span - before, data_end});
    const auto cost = [rows](const RowLayout& l) {
      const int64_t columns = rows * l.images * l.slot, vectors = (columns + 15) / 16;
      // vectors per image as an exact fraction of the images' least common multiple, 12
      return std::tuple{vectors * (12 / l.images), l.images, columns % 16 != 0, l.slot};
    };
    RowLayout best{1, padded};
    for (const int64_t images : {1, 2, 3, 4}) {
      if (images > std::max<int64_t>(1, max_images)) break;
      for (int64_t slot = shortest; slot <= padded; ++slot)
        if (cost({images, slot}) < cost(best)) best = {images, slot};
    }
    return best;
  }
};

// Whether a stride-1 product on shifted rows of `axis` (the horizontal one) can store its
// rows without padding columns, reading them under the edge masks of sgemm_packed_a
// (sgemm.h): a filter 3 wide with one column of padding, on images whose width divides
// or is divided by the vectors' 16 lanes, on a CPU whose kernels have lane masks. No
// output column is then computed only to be dropped: at 16x16 a row was 17 columns for
// 16 outputs, at 8x8 two images took 18 for 16
// (measurements: docs/PERFORMANCE.md, "Row edges: rows without padding columns").
//
// The rows are laid out for vectors of kEdgeVector floats: images narrower than that go
// side by side until a row fills one (edge_images), and the planes get a vector's margin.
inline constexpr int64_t kEdgeVector = 16;
inline int64_t edge_images(int64_t width) { return std::max<int64_t>(1, kEdgeVector / width); }

inline bool rows_take_edges(const PhaseAxis& axis, int64_t taps, int64_t pad, SgemmIsa isa) {
  const int64_t width = axis.in;
  return taps == 3 && pad == 1 && axis.stride == 1 && width > 0 &&
         sgemm_row_edges_supported(isa, width, edge_images(width) * width);
}

// Zero-padded images, split into phases when strided, and the row offsets of their
// implicit column matrix. The phases of both axes (ph_h, ph_w) of channel c form plane
// (c * phases_h + ph_h) * phases_w + ph_w, Hs x Ws floats, whose rows hold `images`
// images side by side, each in a slot of `slot` floats (PhaseAxis::row_layout). Output
// pixel (p, q) of image i is column j = p * Ws + i * slot + q, and row (c, r, s) of the
// column matrix starts at its plane + tap_start_h[r] * Ws + tap_start_w[s]. With stride
// 1 and one image there is one phase per axis, Hs = H + 2 ph and Ws = W + 2 pw, or less
// where rows share their padding: the plain padded image.
//
// With edges (rows_take_edges), the rows hold no padding columns: slot = W, and enough
// images side by side for rows of whole vectors (two at 8x8). Row (c, r, s) then starts
// s - 1 columns off its output pixel, and the product reads it under edge masks, which
// zero what a padding column would have held; a margin of a vector before and after
// the planes keeps the reads one column outside them inside the buffer.
struct ShiftedRows {
  int64_t C;
  PhaseAxis vertical, horizontal;
  int64_t P, Q, Hs;
  int64_t row_edges;  // 0, or with edges the width of an image row (W)
  PhaseAxis::RowLayout layout;
  int64_t Ws;    // layout.images * layout.slot
  int64_t left;  // the columns of padding before an image in its slot
  std::vector<int64_t> offsets;  // row (c, r, s) of the column matrix starts at xp + offsets[(c*R + r)*S + s]

  ShiftedRows(int64_t C_, int64_t H, int64_t W, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
              int64_t pad_h, int64_t pad_w, int64_t max_images, bool edges = false)
      : C(C_), vertical(H, R, stride_h, pad_h), horizontal(W, S, stride_w, pad_w), P(vertical.out),
        Q(horizontal.out), Hs(vertical.padded), row_edges(edges ? W : 0),
        layout(edges ? PhaseAxis::RowLayout{edge_images(W), W} : horizontal.row_layout(P, max_images)),
        Ws(layout.images * layout.slot), left(edges ? 0 : horizontal.before), offsets(static_cast<size_t>(C * R * S)) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t column = edges ? s - pad_w : horizontal.tap_start[s];
          offsets[static_cast<size_t>((c * R + r) * S + s)] =
              plane(c, vertical.tap_phase[r], horizontal.tap_phase[s]) + vertical.tap_start[r] * Ws + column;
        }
  }
  // Where the plane of channel c and the phases at places i, j of the axes' lists starts.
  int64_t plane(int64_t c, int64_t i, int64_t j) const {
    return ((c * vertical.count() + i) * horizontal.count() + j) * Hs * Ws;
  }
  int64_t columns() const { return P * Ws; }
  int64_t planes() const { return C * vertical.count() * horizontal.count(); }
  // The last row's dropped columns read up to the largest tap_start of the horizontal
  // axis past the last plane: zeros. With edges, a vector's margin on either side.
  int64_t margin() const { return row_edges ? kEdgeVector : 0; }
  int64_t tail() const { return row_edges ? margin() : horizontal.padded - horizontal.out; }
  int64_t padded_size() const { return margin() + planes() * Hs * Ws + tail(); }

  // A padded image is zeroed once (zeroed_planes: `buffer` holds padded_size() floats,
  // and the planes start at the pointer returned), then each image of the batch is
  // copied into its planes, in slot i, which leaves the border and the tail zero: every
  // image writes the same places.
  float* zeroed_planes(float* buffer) const {
    std::fill(buffer, buffer + padded_size(), 0.0f);
    return buffer + margin();
  }
  void copy_interior(const float* x, int64_t i_slot, float* xp) const {
    const int64_t H = vertical.in, W = horizontal.in, sh = vertical.stride, sw = horizontal.stride;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < vertical.count(); ++i)
        for (int64_t j = 0; j < horizontal.count(); ++j) {
          // Input rows ph_h, ph_h + sh, ... go to rows before, before + 1, ... of the plane
          // (as far as it reaches); likewise the columns.
          const int64_t ph_h = vertical.phases[i], ph_w = horizontal.phases[j];
          const int64_t rows = std::min(Hs - vertical.before, (H - ph_h + sh - 1) / sh);
          const int64_t cols = std::min(layout.slot - left, (W - ph_w + sw - 1) / sw);
          float* const to = xp + plane(c, i, j) + vertical.before * Ws + i_slot * layout.slot + left;
          if (sh == 1 && sw == 1 && cols == W && Ws == W) {  // rows end to end in both: one copy
            copy_row(x + (c * H + ph_h) * W, rows * W, to);
            continue;
          }
          for (int64_t row = 0; row < rows; ++row) {
            const float* src = x + (c * H + ph_h + row * sh) * W + ph_w;
            float* dst = to + row * Ws;
            if (sw == 1) {
              copy_row(src, cols, dst);
            } else if (sw == 2) {
              gather_row<2>(src, cols, dst);
            } else {
              for (int64_t col = 0; col < cols; ++col) dst[col] = src[col * sw];
            }
          }
        }
  }

  // Calls f(first, last) for the images [begin, end) in groups of at most `images`, one
  // product each. A last product with a slot to spare computes that slot from an
  // earlier image (or zeros) and drops it: no output column reads another slot's input.
  template <class F>
  void for_each_product(int64_t begin, int64_t end, F&& f) const {
    for (int64_t first = begin; first < end; first += layout.images) f(first, std::min(end, first + layout.images));
  }

  // The same over the runs of images that next(begin, end) hands out (parallel_chunks),
  // calling f(first, last, after_first, after_last) with the images of the product that
  // comes after (none after the last): the run after the current one is claimed when
  // its last product starts, so that the product can prefetch what comes next.
  template <class Next, class F>
  void for_each_product_ahead(Next&& next, F&& f) const {
    int64_t begin, end;
    if (!next(begin, end)) return;
    for (int64_t first = begin;;) {
      const int64_t last = std::min(end, first + layout.images);
      if (last < end) {
        f(first, last, last, std::min(end, last + layout.images));
        first = last;
      } else if (next(begin, end)) {
        f(first, last, begin, std::min(end, begin + layout.images));
        first = begin;
      } else {
        f(first, last, last, last);
        return;
      }
    }
  }

  // out (M x P*Ws) = weights (M x CRS, packed) * col.
  void product(const SgemmPackedA& weights, const float* xp, float* out, const SgemmPrefetch& prefetch = {}) const {
    sgemm_packed_a(weights, false, columns(), 1.0f, xp, 0, offsets.data(), 0.0f, out, columns(), prefetch, row_edges);
  }

  // y (M, P, Q) = act(the image in slot i_slot of wide (M x P*Ws) + bias[m] + residual),
  // with the bias, residual and act = ReLU where given.
  void drop_wrapped(int64_t M, const float* wide, int64_t i_slot, const float* bias, const float* residual, bool relu,
                    float* y) const {
    const bool whole = Ws == Q;  // no dropped columns, one image: each channel's plane is one row
    for (int64_t m = 0; m < M; ++m) {
      const int64_t at = m * P * Q;
      affine_epilogue(whole ? 1 : P, whole ? P * Q : Q, wide + m * P * Ws + i_slot * layout.slot, Ws, 1.0f,
                      bias ? bias[m] : 0.0f, residual ? residual + at : nullptr, relu, y + at);
    }
  }
};

// The geometry of the forward's column matrix and that of the backward data's (stride 1
// only), whose image is dy (K, P, Q) padded by R-1-ph, S-1-pw (see the top of the file),
// with up to max_images images per product; for a product by `weights` (an instruction
// set), rows without padding columns where they take edges. Without weights, the
// padded rows (shifted_backward_filter's dot products read them as they are).
inline ShiftedRows forward_rows(const Conv2dGeom& g, int64_t max_images, const SgemmPackedA* weights = nullptr) {
  const bool edges = weights && g.stride_h == 1 &&
                     rows_take_edges(PhaseAxis(g.W, g.S, g.stride_w, g.pad_w), g.S, g.pad_w, packed_isa(*weights));
  return {g.C, g.H, g.W, g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w, max_images, edges};
}
inline ShiftedRows backward_data_rows(const Conv2dGeom& g, const SgemmPackedA& weights) {
  const int64_t pad_w = g.S - 1 - g.pad_w;
  const bool edges = rows_take_edges(PhaseAxis(g.Q, g.S, 1, pad_w), g.S, pad_w, packed_isa(weights));
  return {g.K, g.P, g.Q, g.R, g.S, 1, 1, g.R - 1 - g.pad_h, pad_w, g.N, edges};
}

}  // namespace polyak::cpu
