// The forward of a 3x3, stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3)
// (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//
// Each 2x2 block of output pixels (a tile) depends on a 4x4 patch d of the zero-padded
// input, and with the transforms
//
//   B^T = | 1  0 -1  0 |     G = |  1    0    0  |     A^T = | 1  1  1  0 |
//         | 0  1  1  0 |         | 1/2  1/2  1/2 |           | 0  1 -1 -1 |
//         | 0 -1  1  0 |         | 1/2 -1/2  1/2 |
//         | 0  1  0 -1 |         |  0    0    1  |
//
// the tile of output channel k is  Y = A^T [ sum_c (G g_kc G^T) .* (B^T d_c B) ] A,  where
// .* multiplies the 16 elements one by one. So with U[e][k][c] the 16 elements e of the
// transformed filters and V[e][c][t] those of the transformed patches of every tile t,
// the sums are 16 independent matrix products M[e] (K x T) = U[e] (K x C) * V[e] (C x T),
// 16 multiplies per tile and channel pair where direct convolution needs 36: 2.25 times
// fewer. The transforms only add and halve, so the rounding stays close to the direct
// sum's.
//
// Two ways to run it. Image by image (winograd_forward, any CPU): per thread, a group of
// images (enough for 64 tiles) is transformed into V, multiplied (U packed once per call
// for all of them: SgemmPackedA), and transformed back into y, with the epilogue (bias,
// residual, ReLU) applied as each output pixel is written. With 16 images in the lanes
// of AVX-512 vectors (winograd_lanes_forward, winograd_lanes.cpp), for small maps, and
// there with F(4x4, 3x3)'s larger tiles.
//
// Image by image, V and M are stored channel by channel, the 16 elements' rows of tiles
// of a channel one after the other: V[c][e][t] and M[k][e][t]; product e reads and
// writes every 16th row. Stored element by element (V[e][c][t]), the 16 rows a
// transform writes or reads for one channel lay C * ld floats apart, 16 KB and more:
// all in the same L1 set, more lines than its 12 ways hold
// (measurements: docs/PERFORMANCE.md, "Winograd: V and M stored channel by channel").
//
// The data gradient is this forward run on dy with the flipped filter (conv2d.cpp). The
// filter gradient is Winograd's adjoint, 16 products summing over the tiles, dU[e] (K x
// C) = (A dY A^T)[e] (K x T) * V[e]^T, then dw = G^T dU G. Image by image it is at best
// about as fast as shifted rows on ResNet-18's layers (each product transposes V[e], and
// is only C columns wide), so the gradient stays there; with images in the lanes it wins
// (winograd_lanes.cpp; measurements: docs/PERFORMANCE.md,
// "Winograd: the filter gradient image by image").
#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "engine/cpu/conv2d.h"
#include "engine/cpu/epilogue.h"
#include "engine/cpu/padded_copy.h"
#include "engine/cpu/scratch.h"
#include "engine/cpu/sgemm.h"
#include "engine/parallel.h"

namespace polyak::cpu {

namespace {

constexpr int64_t kElements = 16;  // of a transformed 4x4 patch

// The tiling of one image: th x tw tiles of 2x2 output pixels, read from a zero-padded
// copy of the image of (2 th + 2) x (2 tw + 2) pixels (the last tile of an odd output
// size reads one zero row or column past the convolution's own padding).
struct Tiles {
  int64_t th, tw, Hp, Wp;
  explicit Tiles(const Conv2dGeom& g) : th((g.P + 1) / 2), tw((g.Q + 1) / 2), Hp(2 * th + 2), Wp(2 * tw + 2) {}
  int64_t count() const { return th * tw; }
};

// Tiles per group of images, the columns of the products: 64 make 16 x C x 64 floats of
// transformed patches (1 MiB at 256 channels), as fast as 256 tiles with a quarter of
// the memory (measurements: docs/PERFORMANCE.md, "Winograd: tiles per group of images").
constexpr int64_t kMinTiles = 64;

// U[e][k][c] = (G g G^T)[e] for the 3x3 filter g of output channel k and input channel c.
// Blocks of filters at a time, tap by tap across the block: the loops over the block
// vectorise, where one filter at a time is scalar code storing to 16 places KC apart,
// slow enough to show beside a layer's products
// (measurements: docs/PERFORMANCE.md, "Winograd: filter transform in blocks").
void transform_filters(const Conv2dGeom& g, const float* w, float* U) {
  constexpr int64_t kBlock = 64;
  const int64_t KC = g.K * g.C;
  parallel_for((KC + kBlock - 1) / kBlock, 64 * kBlock, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kBlock, n = std::min(kBlock, KC - first);
      float taps[9][kBlock] = {};
      for (int64_t i = 0; i < n; ++i)
        for (int t = 0; t < 9; ++t) taps[t][i] = w[(first + i) * 9 + t];
      float gg[4][3][kBlock];  // G g, column j of the filter
      for (int j = 0; j < 3; ++j)
        for (int64_t i = 0; i < kBlock; ++i) {
          const float f0 = taps[j][i], f1 = taps[3 + j][i], f2 = taps[6 + j][i];
          gg[0][j][i] = f0;
          gg[1][j][i] = 0.5f * (f0 + f1 + f2);
          gg[2][j][i] = 0.5f * (f0 - f1 + f2);
          gg[3][j][i] = f2;
        }
      for (int r = 0; r < 4; ++r) {  // (G g) G^T, row r
        float* u = U + (r * 4) * KC + first;
        for (int64_t i = 0; i < n; ++i) {
          const float a = gg[r][0][i], b = gg[r][1][i], c = gg[r][2][i];
          u[i] = a;
          u[KC + i] = 0.5f * (a + b + c);
          u[2 * KC + i] = 0.5f * (a - b + c);
          u[3 * KC + i] = c;
        }
      }
    }
  });
}

// The 16 products' left operands: U[e] (K x C) packed, in `packed` (the calling thread's).
void pack_filters(const Conv2dGeom& g, const float* w, std::vector<float>& filter_buffer,
                  std::array<SgemmPackedA, kElements>& packed) {
  float* const U = scratch(filter_buffer, kElements * g.K * g.C);
  transform_filters(g, w, U);
  parallel_for(kElements, g.K * g.C, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) packed[e].pack_on_this_thread(false, g.K, g.C, U + e * g.K * g.C, g.C);
  });
}

// The loops of the transforms, each over a row of values. GCC honours __restrict on
// parameters (not on local pointers), and without it the four outputs of a loop, which
// could alias its inputs, keep it scalar.

// r_i[j] = (B^T d)_i[j] for the four rows d_0..3 of a row of tiles, along the width.
void rows_of_bt_d(int64_t n, const float* __restrict d0, const float* __restrict d1, const float* __restrict d2,
                  const float* __restrict d3, float* __restrict r0, float* __restrict r1, float* __restrict r2,
                  float* __restrict r3) {
  for (int64_t j = 0; j < n; ++j) {
    r0[j] = d0[j] - d2[j];
    r1[j] = d1[j] + d2[j];
    r2[j] = d2[j] - d1[j];
    r3[j] = d1[j] - d3[j];
  }
}

// v_j[tx] = (r B)_j for the columns 2 tx .. 2 tx + 3 of one row r of B^T d, tile by tile.
void columns_of_r_b(int64_t tiles, const float* __restrict r, float* __restrict v0, float* __restrict v1,
                    float* __restrict v2, float* __restrict v3) {
  for (int64_t tx = 0; tx < tiles; ++tx) {
    const float a = r[2 * tx], b = r[2 * tx + 1], c = r[2 * tx + 2], d = r[2 * tx + 3];
    v0[tx] = a - c;
    v1[tx] = b + c;
    v2[tx] = c - b;
    v3[tx] = b - d;
  }
}

// top[tx] and bottom[tx]: the two rows of A^T m for column j of each tile's m, whose
// rows are m0..3 (one value per tile).
void rows_of_at_m(int64_t tiles, const float* __restrict m0, const float* __restrict m1, const float* __restrict m2,
                  const float* __restrict m3, float* __restrict top, float* __restrict bottom) {
  for (int64_t tx = 0; tx < tiles; ++tx) {
    top[tx] = m0[tx] + m1[tx] + m2[tx];
    bottom[tx] = m1[tx] - m2[tx] - m3[tx];
  }
}

// out[2 tx], out[2 tx + 1] = (s A) for the four columns s_0..3 of one row of A^T m.
void columns_of_s_a(int64_t tiles, const float* __restrict s0, const float* __restrict s1, const float* __restrict s2,
                    const float* __restrict s3, float* __restrict out) {
  for (int64_t tx = 0; tx < tiles; ++tx) {
    out[2 * tx] = s0[tx] + s1[tx] + s2[tx];
    out[2 * tx + 1] = s1[tx] - s2[tx] - s3[tx];
  }
}

// V[c][e][t0 + t] = (B^T d B)[e] for the tiles t of one padded image xp (C x Hp x Wp);
// ld: the row length of V (the tiles of the whole group).
void transform_patches(const Conv2dGeom& g, const Tiles& tiles, const float* xp, float* V, int64_t t0, int64_t ld) {
  const int64_t plane = tiles.Hp * tiles.Wp, stride_e = ld;
  thread_local std::vector<float> rows_buffer;
  float* r = scratch(rows_buffer, 4 * tiles.Wp);  // the four rows of B^T d, across the image's width
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t ty = 0; ty < tiles.th; ++ty) {
      const float* d = xp + c * plane + 2 * ty * tiles.Wp;
      const int64_t Wp = tiles.Wp;
      rows_of_bt_d(Wp, d, d + Wp, d + 2 * Wp, d + 3 * Wp, r, r + Wp, r + 2 * Wp, r + 3 * Wp);
      float* v = V + c * kElements * ld + t0 + ty * tiles.tw;
      for (int64_t i = 0; i < 4; ++i) {
        float* vi = v + (i * 4) * stride_e;
        columns_of_r_b(tiles.tw, r + i * Wp, vi, vi + stride_e, vi + 2 * stride_e, vi + 3 * stride_e);
      }
    }
}

// y (K x P x Q) of one image = act(A^T M A + bias + residual) for the tiles t0 .. of M
// (K x 16 x ld), dropping the pixels of the last tiles past P or Q.
void transform_outputs(const Conv2dGeom& g, const Tiles& tiles, const float* M, int64_t t0, int64_t ld,
                       const float* bias, const float* residual, bool relu, float* y) {
  const int64_t stride_e = ld;
  thread_local std::vector<float> out_buffer;
  const int64_t tw = tiles.tw;
  float* o = scratch(out_buffer, 2 * 2 * tw + 8 * tw);  // two output rows, then A^T m's 2 x 4 rows
  float* const s = o + 4 * tw;
  for (int64_t k = 0; k < g.K; ++k) {
    const float shift = bias ? bias[k] : 0.0f;
    for (int64_t ty = 0; ty < tiles.th; ++ty) {
      const float* m = M + k * kElements * ld + t0 + ty * tw;
      for (int64_t j = 0; j < 4; ++j)  // m's element (i, j) is at m + (4 i + j) * stride_e
        rows_of_at_m(tw, m + j * stride_e, m + (4 + j) * stride_e, m + (8 + j) * stride_e, m + (12 + j) * stride_e,
                     s + j * tw, s + (4 + j) * tw);
      float* const o0 = o;
      float* const o1 = o + 2 * tw;
      columns_of_s_a(tw, s, s + tw, s + 2 * tw, s + 3 * tw, o0);
      columns_of_s_a(tw, s + 4 * tw, s + 5 * tw, s + 6 * tw, s + 7 * tw, o1);
      // The tile row's two output rows (one at the bottom edge of an odd P).
      const int64_t at = (k * g.P + 2 * ty) * g.Q;
      affine_epilogue(std::min<int64_t>(2, g.P - 2 * ty), g.Q, o0, o1 - o0, 1.0f, shift,
                      residual ? residual + at : nullptr, relu, y + at);
    }
  }
}

}  // namespace

bool winograd_applies(const Conv2dGeom& g) {
  return g.R == 3 && g.S == 3 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h < 3 && g.pad_w < 3 && g.P > 0 &&
         g.Q > 0;
}

void winograd_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias,
                      const Epilogue& epilogue, float* y) {
  const Tiles tiles(g);
  const int64_t per_group = std::clamp<int64_t>((kMinTiles + tiles.count() - 1) / tiles.count(), 1,
                                                std::max<int64_t>(1, g.N));
  const int64_t groups = (g.N + per_group - 1) / per_group;

  // The transformed filters, then each element's K x C matrix packed for the products.
  // Both belong to the calling thread; the workers reach them through these references.
  thread_local std::vector<float> filter_buffer;
  thread_local std::array<SgemmPackedA, kElements> packed_buffer;
  pack_filters(g, w, filter_buffer, packed_buffer);
  const std::array<SgemmPackedA, kElements>& packed = packed_buffer;

  const int64_t flop_per_group = 2 * kElements * g.K * g.C * tiles.count() * per_group;
  parallel_for(groups, flop_per_group, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> image_buffer, patch_buffer, product_buffer;
    const int64_t padded = g.C * tiles.Hp * tiles.Wp, ld = per_group * tiles.count();
    const int64_t image = g.C * g.H * g.W, out = g.K * g.P * g.Q;
    float* xp = scratch(image_buffer, padded);
    float* V = scratch(patch_buffer, kElements * g.C * ld);
    float* M = scratch(product_buffer, kElements * g.K * ld);
    std::fill(xp, xp + padded, 0.0f);  // the border, once (padded_copy.h)
    for (int64_t group = begin; group < end; ++group) {
      const int64_t n0 = group * per_group, count = std::min(per_group, g.N - n0), width = count * tiles.count();
      for (int64_t i = 0; i < count; ++i) {
        copy_interior(g.C, g.H, g.W, x + (n0 + i) * image, tiles.Hp, tiles.Wp, g.pad_h, g.pad_w, xp);
        transform_patches(g, tiles, xp, V, i * tiles.count(), ld);
      }
      // What the transforms read and write next: the next group's images, this group's
      // residual and output; a share of each is prefetched during each product.
      const int64_t after = group + 1 < end ? std::min(per_group, g.N - n0 - count) : 0;
      const auto next_x = SgemmPrefetch::Range::floats(x + (n0 + count) * image, after * image);
      const auto residuals = epilogue.residual ? SgemmPrefetch::Range::floats(epilogue.residual + n0 * out, count * out)
                                               : SgemmPrefetch::Range{};
      const auto outputs = SgemmPrefetch::Range::floats(y + n0 * out, count * out);
      for (int64_t e = 0; e < kElements; ++e) {
        SgemmPrefetch prefetch;
        prefetch.reads[0] = next_x.part(e, kElements), prefetch.reads[1] = residuals.part(e, kElements);
        prefetch.write = outputs.part(e, kElements);
        sgemm_packed_a(packed[e], false, width, 1.0f, V + e * ld, kElements * ld, nullptr, 0.0f, M + e * ld,
                       kElements * ld, prefetch);
      }
      for (int64_t i = 0; i < count; ++i) {
        const int64_t at = (n0 + i) * out;
        const float* residual = epilogue.residual ? epilogue.residual + at : nullptr;
        transform_outputs(g, tiles, M, i * tiles.count(), ld, bias, residual, epilogue.relu, y + at);
      }
    }
  });
}

}  // namespace polyak::cpu
