// 2-D convolution on the CPU: matrix products on our sgemm (engine/cpu/sgemm.h), one
// image per product or a few side by side, by the algorithms of engine/cpu/conv2d.h.
//
// Shapes (NCHW, groups = 1, dilation = 1): input x (N,C,H,W), weight w (K,C,R,S),
// output y (N,K,P,Q) with P = (H + 2*pad_h - R) / stride_h + 1 (Q likewise), and
//
//   y[n,k,p,q] = bias[k] + sum_{c,r,s} w[k,c,r,s] * x[n, c, p*sh - ph + r, q*sw - pw + s]
//
// where x outside the image reads as zero (the padding).
//
// im2col turns that sum into a matrix product. For one image, the column matrix
// col has one row per filter tap (c,r,s) and one column per output pixel (p,q):
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
// The forward's epilogue (engine/backend.h), y = act(y + residual), is applied where each
// image's output is written: in the copy out of the wide buffer (shifted rows), or right
// after the image's product while it is still in cache (im2col).
//
// The copies in and out of a product wait on L3 (a layer's activations do not fit in L2),
// so each product prefetches what the copies around it touch next, the next image in and
// this one's output, between the steps of its micro-kernels (SgemmPrefetch, sgemm.h).
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
#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

#include "engine/cpu/conv2d.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/epilogue.h"
#include "engine/cpu/moments.h"
#include "engine/cpu/padded_copy.h"
#include "engine/cpu/partial_sums.h"
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

// The weights as the products' A, packed once per call for all images (not once per
// product): one buffer for the calling thread, reused by every call. The workers must
// reach it through a pointer or reference taken here (naming a thread_local inside the
// parallel body would give each worker its own).
SgemmPackedA& packed_weights(bool trans_a, int64_t M, int64_t K, const float* w) {
  thread_local SgemmPackedA packed;
  packed.pack(trans_a, M, K, w, trans_a ? M : K);
  return packed;
}

int64_t gemm_cost(const Conv2dGeom& g) { return std::max<int64_t>(1, g.K * g.C * g.R * g.S * g.P * g.Q); }

// ---- shifted rows

// dst[i] = src[i * stride] for i < n. With the stride a constant the compiler loads
// whole vectors and permutes them (two loads and one vpermt2ps per 16 floats with
// AVX-512 at stride 2); with a variable stride it makes one scalar load per float, which
// takes nearly as long as a strided forward's products
// (measurements: docs/PERFORMANCE.md, "Stride 2: gathering with a constant stride").
template <int64_t stride>
void gather_row(const float* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i * stride];
}

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
constexpr int64_t kEdgeVector = 16;
int64_t edge_images(int64_t width) { return std::max<int64_t>(1, kEdgeVector / width); }

bool rows_take_edges(const PhaseAxis& axis, int64_t taps, int64_t pad, SgemmIsa isa) {
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
ShiftedRows forward_rows(const Conv2dGeom& g, int64_t max_images, const SgemmPackedA* weights = nullptr) {
  const bool edges = weights && g.stride_h == 1 &&
                     rows_take_edges(PhaseAxis(g.W, g.S, g.stride_w, g.pad_w), g.S, g.pad_w, packed_isa(*weights));
  return {g.C, g.H, g.W, g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w, max_images, edges};
}
ShiftedRows backward_data_rows(const Conv2dGeom& g, const SgemmPackedA& weights) {
  const int64_t pad_w = g.S - 1 - g.pad_w;
  const bool edges = rows_take_edges(PhaseAxis(g.Q, g.S, 1, pad_w), g.S, pad_w, packed_isa(weights));
  return {g.K, g.P, g.Q, g.R, g.S, 1, 1, g.R - 1 - g.pad_h, pad_w, g.N, edges};
}

// With plane_moments, also the kPlaneMoments of each plane of y, each computed right
// after the copy-out has written its plane (in L1).
void shifted_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias, const Epilogue& epilogue,
                     float* y, float* plane_moments) {
  const SgemmPackedA& weights = packed_weights(false, g.K, g.C * g.R * g.S, w);
  const ShiftedRows rows = forward_rows(g, g.N, &weights);
  const int64_t image = g.C * g.H * g.W, out = g.K * g.P * g.Q;
  parallel_chunks(g.N, rows.layout.images, gemm_cost(g), [&](auto&& next) {
    thread_local std::vector<float> image_buffer, wide_buffer;
    float* xp = rows.zeroed_planes(scratch(image_buffer, rows.padded_size()));
    float* wide = scratch(wide_buffer, g.K * rows.columns());
    rows.for_each_product_ahead(next, [&](int64_t first, int64_t last, int64_t after_first, int64_t after_last) {
      for (int64_t n = first; n < last; ++n) rows.copy_interior(x + n * image, n - first, xp);
      // The next images to copy in, the residual and the output of these.
      SgemmPrefetch prefetch;
      prefetch.reads[0] = SgemmPrefetch::Range::floats(x + after_first * image, (after_last - after_first) * image);
      if (epilogue.residual)
        prefetch.reads[1] = SgemmPrefetch::Range::floats(epilogue.residual + first * out, (last - first) * out);
      prefetch.write = SgemmPrefetch::Range::floats(y + first * out, (last - first) * out);
      rows.product(weights, xp, wide, prefetch);
      const int64_t plane = g.P * g.Q;
      for (int64_t n = first; n < last; ++n) {
        const int64_t at = n * out;
        rows.drop_wrapped(g.K, wide, n - first, bias, epilogue.residual ? epilogue.residual + at : nullptr,
                          epilogue.relu, y + at);
        if (plane_moments)
          for (int64_t k = 0; k < g.K; ++k)
            cpu::plane_moments(y + at + k * plane, plane, plane_moments + (n * g.K + k) * kPlaneMoments);
      }
    });
  });
}

// The filter of the backward data as a forward (see the top of the file):
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
  const int64_t image = g.K * g.P * g.Q, out = g.C * g.H * g.W;
  parallel_chunks(g.N, rows.layout.images, gemm_cost(g), [&](auto&& next) {
    thread_local std::vector<float> image_buffer, wide_buffer;
    float* dyp = rows.zeroed_planes(scratch(image_buffer, rows.padded_size()));
    float* wide = scratch(wide_buffer, g.C * rows.columns());
    rows.for_each_product_ahead(next, [&](int64_t first, int64_t last, int64_t after_first, int64_t after_last) {
      for (int64_t n = first; n < last; ++n) rows.copy_interior(dy + n * image, n - first, dyp);
      SgemmPrefetch prefetch;  // the next images to copy in, the output of these
      prefetch.reads[0] = SgemmPrefetch::Range::floats(dy + after_first * image, (after_last - after_first) * image);
      prefetch.write = SgemmPrefetch::Range::floats(dx + first * out, (last - first) * out);
      rows.product(weights, dyp, wide, prefetch);
      for (int64_t n = first; n < last; ++n) {
        float* const dx_image = dx + n * out;
        rows.drop_wrapped(g.C, wide, n - first, nullptr, add ? dx_image : nullptr, false, dx_image);
      }
    });
  });
}

// ---- the data gradient of a strided convolution, on the phases of dx

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

// ---- Winograd (winograd.cpp): the backward data as the forward of dy padded by
// R-1-ph, S-1-pw with the flipped filter, the same identity as shifted rows use.

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

// ---- the filter gradient: a sum over images

// dw = sum over images of their filter gradients (K x CRS each): accumulate(n_begin,
// n_end, acc) overwrites acc with the sum over images [n_begin, n_end).
template <class Accumulate>
void sum_over_images(const Conv2dGeom& g, float* dw, Accumulate&& accumulate) {
  sum_in_slots(g.N, g.K * g.C * g.R * g.S, gemm_cost(g), dw, accumulate);
}

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

// dy' (K x P*width): image n's dy spread onto rows `width` floats apart. The columns
// q >= Q must hold zeros, which keep the wrapped-around image values they meet out of
// the sum; like a padded image's border, they are written once (every image writes the
// same places), when the buffer is set up.
void spread_output(const Conv2dGeom& g, const float* dy, int64_t n, int64_t width, float* spread) {
  const float* dyn = dy + n * g.K * g.P * g.Q;
  for (int64_t row = 0; row < g.K * g.P; ++row) copy_row(dyn + row * g.Q, g.Q, spread + row * width);
}

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

// With row edges (sgemm_packed_a's taps along B's columns; AVX-512, a filter 3 wide
// with one column of padding, whole vectors of channels), the rows hold no padding
// pixels: the products read one pixel to the left of each and zero the taps across an
// image row's edge. With one image per row, dy' is then dy itself, packed in place
// (measurements: docs/PERFORMANCE.md, "Row edges: rows without padding columns").
bool filter_gradient_takes_edges(const Conv2dGeom& g) {
  return g.S == 3 && g.pad_w == 1 && g.stride_w == 1 && g.stride_h == 1 &&
         sgemm_row_edges_supported(sgemm_active_isa(), g.W, g.S * g.C, g.C);
}

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

// ---- im2col

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
  // On maps of 16x16 and smaller, 16 images in the lanes of AVX-512 vectors win over
  // both (winograd.cpp has the method; measurements: docs/PERFORMANCE.md,
  // "Winograd: 16 images in the vector lanes"). Not with 16 channels (the transforms'
  // share grows as the channels shrink), not where a row of tiles makes more than 1 MiB
  // of transformed patches (16 elements x channels x tiles x 16 images, which a task
  // keeps in L2), and not with a quarter of the lanes or more left empty (small batches).
  const int64_t lanes = 16 * ((g.N + 15) / 16), row_of_tiles = 16 * std::max(g.C, g.K) * ((g.Q + 1) / 2) * 16 * 4;
  if (sgemm_active_isa() == SgemmIsa::Avx512 && conv_supports(ConvAlgorithm::WinogradLanes, g) && g.C >= 32 &&
      g.K >= 32 && g.P * g.Q <= 256 && row_of_tiles <= (1 << 20) && 4 * g.N >= 3 * lanes)
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
