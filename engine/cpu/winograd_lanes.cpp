// Winograd's F(4x4, 3x3) with 16 images in the lanes of AVX-512 vectors, for small
// maps: the forward and the filter gradient. x86-64 only (the intrinsics under a target
// attribute, called where the CPU has AVX-512); elsewhere winograd_lanes_available() is
// false, so conv_supports never offers WinogradLanes.
//
// The method is winograd.cpp's with larger tiles: each 4x4 block of output pixels
// depends on a 6x6 patch d of the zero-padded input, and with (Lavin and Gray, 2016;
// interpolation points 0, 1, -1, 2, -2 and infinity)
//
//   B^T = | 4  0 -5  0  1  0 |   G = |  1/4    0     0  |   A^T = | 1  1  1  1  1  0 |
//         | 0 -4 -4  1  1  0 |       | -1/6  -1/6  -1/6 |         | 0  1 -1  2 -2  0 |
//         | 0  4 -4 -1  1  0 |       | -1/6   1/6  -1/6 |         | 0  1  1  4  4  0 |
//         | 0 -2 -1  2  1  0 |       | 1/24  1/12   1/6 |         | 0  1 -1  8 -8  1 |
//         | 0  2 -1 -2  1  0 |       | 1/24 -1/12   1/6 |
//         | 0  4  0 -5  0  1 |       |   0     0     1  |
//
// the tile of output channel k is  Y = A^T [ sum_c (G g_kc G^T) .* (B^T d_c B) ] A:
// 36 independent products M[e] = U[e] (K x C) * V[e] (C x tiles), 36 multiplies per tile
// and channel pair where direct convolution needs 144, four times fewer (F(2x2, 3x3):
// 2.25). The transforms cost about as much per output pixel as F(2x2, 3x3)'s (a 6x6
// patch serves 16 pixels, a 4x4 one 4), so the products' saving is the gain. Its price
// is rounding: the transforms scale by up to 8 and by 1/24, and the error of a float sum
// grows by about that much (tests/engine/test_conv_algorithms.cpp bounds it).
//
// On small maps a row of tiles is short (2 tiles at 7x7), and loops along it would be
// mostly overhead. Here the 16 lanes of an AVX-512 vector hold the same pixel of 16
// images instead, so every step of a transform is one vector operation whatever the
// map's size: a tile's 36 elements, for 16 images, are 36 vectors. Images come in and
// go out through 16 x 16 transposes in registers: 16 consecutive pixels of each of 16
// images in, each pixel across the images out, and back for the outputs.
//
// The work is split into tasks: a group of 16 images by a block of whole tile rows, or
// on small maps several groups of 16 images by all the rows, up to about 8 MiB each of
// V and M (36 x C x columns floats, columns = 16 x the task's tiles). A task transforms its patches channel by channel, runs the 36 products,
// then transforms them back channel by channel and writes its outputs with the
// epilogue. Between the products it prefetches what the epilogue reads and writes (an
// image's lines per product) and the next task's input rows. The filter gradient runs
// the same tasks on x and dy (winograd_lanes_backward_filter).
//
// V is stored V[e][c][column] with its rows ld floats apart, ld an odd number of cache
// lines, and the elements e an odd number of lines apart as well (M likewise): a
// transform writes the 36 elements of a tile, a product reads the C rows of one
// element, and with power-of-two strides either would crowd one L1 set.
//
// The prefetches matter more here than image by image: a task's input and output are
// a few rows of each of C (or K) planes of 16 images, scattered runs that the hardware
// prefetchers do not follow: they are requested as rows of planes during the products
// (SgemmPrefetch's runs; measurements: docs/PERFORMANCE.md,
// "Winograd lanes: prefetching rows of planes").
//
// Where this wins over image by image and shifted rows: conv_algorithm (conv2d.cpp).
// Its filter gradient (winograd_lanes_backward_filter) is faster than shifted rows'
// (channels last) (measurements: docs/PERFORMANCE.md, "Winograd lanes: filter gradient",
// and "Winograd lanes: F(4x4, 3x3)").
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "engine/cpu/conv2d.h"
#include "engine/cpu/epilogue.h"
#include "engine/cpu/partial_sums.h"
#include "engine/cpu/scratch.h"
#include "engine/cpu/sgemm.h"
#include "engine/parallel.h"

namespace polyak::cpu {

#if defined(__x86_64__)

namespace {

#define POLYAK_WINOGRAD_LANES __attribute__((target("avx512f,prfchw")))
#define POLYAK_WINOGRAD_LANES_INLINE POLYAK_WINOGRAD_LANES inline __attribute__((always_inline))

constexpr int64_t kLanes = 16;
constexpr int64_t kTile = 4;       // output pixels a side of a tile
constexpr int64_t kPatch = 6;      // input pixels a side of its patch
constexpr int64_t kElements = 36;  // of a transformed 6x6 patch, element (i, j) at 6 i + j
// The bytes of V (and of M) per task: tile rows, then groups of 16 images, are added to
// a task while they fit. Wider tasks run wider products and read fewer rows twice (a
// task's patches reach two rows into the next task's); F(4x4, 3x3)'s 36 elements per
// tile make V large, and up to 8 MiB (spilling L2 into L3) the products' width won
// over the cache (measurements: docs/PERFORMANCE.md, "Winograd lanes: F(4x4, 3x3)").
constexpr int64_t kLanesBlockBytes = 8 << 20;
// The filter gradient's products sum over a task's columns, K rows by C columns. From
// 512 columns with at most 32 rows sgemm takes them as dot products (dot_products_pay
// in sgemm_dot.h), slower on these small outputs; capped at 256 columns they stay on
// the blocked kernels
// (measurements: docs/PERFORMANCE.md, "Winograd lanes: filter-gradient product width").
constexpr int64_t kLanesGradientColumns = 256;

// Every lane: GCC 12 warns that the plain forms of the shuffles and of max read an
// uninitialised value (they pass _mm512_undefined_ps() as the source of lanes the mask
// keeps; GCC bug 105593), and the zero-masked forms with every lane selected are the
// same instructions.
constexpr __mmask16 kAll = 0xFFFF;
constexpr __mmask8 kAllDoubles = 0xFF;

// r[i][j] -> r[j][i] for 16 x 16 floats: four rounds of 16 shuffles, each interleaving
// the rows' elements in runs twice as long as the round before (1, 2, 4, then 8 floats).
POLYAK_WINOGRAD_LANES_INLINE void transpose_16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_maskz_unpacklo_ps(kAll, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_maskz_unpackhi_ps(kAll, r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 2; ++j) {
      const __m512d a = _mm512_castps_pd(t[4 * i + j]), b = _mm512_castps_pd(t[4 * i + 2 + j]);
      r[4 * i + 2 * j] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(kAllDoubles, a, b));
      r[4 * i + 2 * j + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(kAllDoubles, a, b));
    }
  for (int i = 0; i < 2; ++i)
    for (int m = 0; m < 4; ++m) {
      t[8 * i + m] = _mm512_maskz_shuffle_f32x4(kAll, r[8 * i + m], r[8 * i + 4 + m], 0x88);
      t[8 * i + 4 + m] = _mm512_maskz_shuffle_f32x4(kAll, r[8 * i + m], r[8 * i + 4 + m], 0xdd);
    }
  for (int m = 0; m < 8; ++m) {
    r[m] = _mm512_maskz_shuffle_f32x4(kAll, t[m], t[8 + m], 0x88);
    r[8 + m] = _mm512_maskz_shuffle_f32x4(kAll, t[m], t[8 + m], 0xdd);
  }
}

POLYAK_WINOGRAD_LANES_INLINE __mmask16 first_lanes(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }

// The four transforms along one line of a tile, 16 images at a time; each is applied to
// the columns of a tile, then to the rows of the result.

// t = B^T d for a line d of 6 patch pixels.
POLYAK_WINOGRAD_LANES_INLINE void times_bt(const __m512 d[kPatch], __m512 t[kPatch]) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f), five = _mm512_set1_ps(5.0f);
  const __m512 d1_plus_d2 = _mm512_add_ps(d[1], d[2]), d1_minus_d2 = _mm512_sub_ps(d[1], d[2]);
  const __m512 d4_minus_d2 = _mm512_sub_ps(d[4], d[2]), d3_minus_d1 = _mm512_sub_ps(d[3], d[1]);
  t[0] = _mm512_fmadd_ps(four, d[0], _mm512_fnmadd_ps(five, d[2], d[4]));
  t[1] = _mm512_fnmadd_ps(four, d1_plus_d2, _mm512_add_ps(d[3], d[4]));
  t[2] = _mm512_fmadd_ps(four, d1_minus_d2, _mm512_sub_ps(d[4], d[3]));
  t[3] = _mm512_fmadd_ps(two, d3_minus_d1, d4_minus_d2);
  t[4] = _mm512_fnmadd_ps(two, d3_minus_d1, d4_minus_d2);
  t[5] = _mm512_fmadd_ps(four, d[1], _mm512_fnmadd_ps(five, d[3], d[5]));
}

// o = A^T m for a line m of 6 transformed values: 4 output pixels.
POLYAK_WINOGRAD_LANES_INLINE void times_at(const __m512 m[kPatch], __m512 o[kTile]) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f), eight = _mm512_set1_ps(8.0f);
  const __m512 m1_plus_m2 = _mm512_add_ps(m[1], m[2]), m1_minus_m2 = _mm512_sub_ps(m[1], m[2]);
  const __m512 m3_plus_m4 = _mm512_add_ps(m[3], m[4]), m3_minus_m4 = _mm512_sub_ps(m[3], m[4]);
  o[0] = _mm512_add_ps(_mm512_add_ps(m[0], m1_plus_m2), m3_plus_m4);
  o[1] = _mm512_fmadd_ps(two, m3_minus_m4, m1_minus_m2);
  o[2] = _mm512_fmadd_ps(four, m3_plus_m4, m1_plus_m2);
  o[3] = _mm512_add_ps(_mm512_fmadd_ps(eight, m3_minus_m4, m1_minus_m2), m[5]);
}

// t = A y for a line y of 4 output gradients (the adjoint of times_at): 6 values.
POLYAK_WINOGRAD_LANES_INLINE void times_a(const __m512 y[kTile], __m512 t[kPatch]) {
  const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f), eight = _mm512_set1_ps(8.0f);
  const __m512 even = _mm512_add_ps(y[0], y[2]), odd = _mm512_add_ps(y[1], y[3]);
  const __m512 even_4 = _mm512_fmadd_ps(four, y[2], y[0]), odd_8 = _mm512_fmadd_ps(eight, y[3], _mm512_mul_ps(two, y[1]));
  t[0] = y[0];
  t[1] = _mm512_add_ps(even, odd);
  t[2] = _mm512_sub_ps(even, odd);
  t[3] = _mm512_add_ps(even_4, odd_8);
  t[4] = _mm512_sub_ps(even_4, odd_8);
  t[5] = y[3];
}

// out = T x T^T for one tile's n x n values x, T the line transform `times` (n values
// to m): `times` down each column of x, then along each row of the result. Element (i, j)
// of x is read at in[i * in_row + j * in_column], of out written at out[i * out_row + j *
// out_column] (a tile's pixels, or its elements in V or M).
template <int n, int m, void (*times)(const __m512*, __m512*)>
POLYAK_WINOGRAD_LANES_INLINE void transform_tile(const float* in, int64_t in_row, int64_t in_column, float* out,
                                                 int64_t out_row, int64_t out_column) {
  __m512 tx[m][n];  // T x, [row][column]
  for (int j = 0; j < n; ++j) {
    __m512 column[n], t[m];
    for (int i = 0; i < n; ++i) column[i] = _mm512_load_ps(in + i * in_row + j * in_column);
    times(column, t);
    for (int i = 0; i < m; ++i) tx[i][j] = t[i];
  }
  for (int i = 0; i < m; ++i) {
    __m512 t[m];
    times(tx[i], t);
    for (int j = 0; j < m; ++j) _mm512_store_ps(out + i * out_row + j * out_column, t[j]);
  }
}

// A floats pointer rounded up to a cache line (the scratch holds 16 floats more).
float* line_aligned(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~static_cast<uintptr_t>(63));
}

// u = G g for a line g of 3 filter taps, and its adjoint f = G^T u (scalar: filters are
// transformed once per call).
void times_g(const float g[3], float u[kPatch]) {
  u[0] = g[0] / 4;
  u[1] = -(g[0] + g[1] + g[2]) / 6;
  u[2] = -(g[0] - g[1] + g[2]) / 6;
  u[3] = g[0] / 24 + g[1] / 12 + g[2] / 6;
  u[4] = g[0] / 24 - g[1] / 12 + g[2] / 6;
  u[5] = g[2];
}
void times_gt(const float u[kPatch], float f[3]) {
  f[0] = u[0] / 4 - (u[1] + u[2]) / 6 + (u[3] + u[4]) / 24;
  f[1] = (u[2] - u[1]) / 6 + (u[3] - u[4]) / 12;
  f[2] = (u[3] + u[4] - u[1] - u[2]) / 6 + u[5];
}

// The 36 products' left operands: U[e] (K x C) = (G g G^T)[e] for the 3x3 filters g of
// every pair (k, c), packed into `packed` (the calling thread's). Blocks of 64 pairs at a
// time, so that each element's stores run along the block (one filter at a time would
// store to 36 places K C floats apart; winograd.cpp's transform_filters measured that).
void pack_filters(const Conv2dGeom& g, const float* w, std::vector<float>& filter_buffer,
                  std::array<SgemmPackedA, kElements>& packed) {
  constexpr int64_t kBlock = 64;
  const int64_t KC = g.K * g.C;
  float* const U = scratch(filter_buffer, kElements * KC);
  parallel_for((KC + kBlock - 1) / kBlock, 64 * kBlock, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kBlock, n = std::min(kBlock, KC - first);
      float gg[kPatch][3][kBlock];  // G g: row i, column j, pair first + b
      for (int64_t b = 0; b < n; ++b)
        for (int j = 0; j < 3; ++j) {
          const float* f = w + (first + b) * 9;
          const float column[3] = {f[j], f[3 + j], f[6 + j]};
          float u[kPatch];
          times_g(column, u);
          for (int i = 0; i < kPatch; ++i) gg[i][j][b] = u[i];
        }
      for (int i = 0; i < kPatch; ++i)  // (G g) G^T, row i
        for (int64_t b = 0; b < n; ++b) {
          const float row[3] = {gg[i][0][b], gg[i][1][b], gg[i][2][b]};
          float u[kPatch];
          times_g(row, u);
          for (int j = 0; j < kPatch; ++j) U[(kPatch * i + j) * KC + first + b] = u[j];
        }
    }
  });
  parallel_for(kElements, KC, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) packed[e].pack_on_this_thread(false, g.K, g.C, U + e * KC, g.C);
  });
}

// The tiling of one image: th x tw tiles of 4x4 output pixels (the last ones of a size
// that is no multiple of 4 reach past the map: their patches read zeros there, and
// their extra outputs are dropped).
struct Tiles {
  int64_t th, tw;
  explicit Tiles(const Conv2dGeom& g) : th((g.P + kTile - 1) / kTile), tw((g.Q + kTile - 1) / kTile) {}
};

// The tasks of a call: groups of 16 images by blocks of tile rows, as many rows as
// make block_bytes of V (or M) and at most column_cap columns, and at least one; where
// a block holds every row of an image (small maps), as many groups of 16 images as fit
// the same bounds, so that the products stay wide.
struct LaneTasks {
  Tiles tiles;
  int64_t columns_allowed, rows_per_block, blocks, groups, groups_per_task;
  LaneTasks(const Conv2dGeom& g, int64_t block_bytes, int64_t column_cap)
      : tiles(g),
        columns_allowed(std::min(block_bytes / (kElements * std::max(g.C, g.K) * 4), column_cap)),
        rows_per_block(std::clamp<int64_t>(columns_allowed / (tiles.tw * kLanes), 1, tiles.th)),
        blocks((tiles.th + rows_per_block - 1) / rows_per_block),
        groups((g.N + kLanes - 1) / kLanes),
        groups_per_task(blocks > 1 ? 1 : std::clamp<int64_t>(columns_allowed / (tiles.th * tiles.tw * kLanes), 1, groups)) {}
  int64_t count() const { return (groups + groups_per_task - 1) / groups_per_task * blocks; }
  int64_t max_columns() const { return groups_per_task * rows_per_block * tiles.tw * kLanes; }
};

// The least stride of at least `floats` floats (a multiple of 16) that is an odd number
// of cache lines: V's and M's rows and elements.
int64_t odd_lines(int64_t floats) { return floats / kLanes % 2 ? floats : floats + kLanes; }

// One task: images n0 .. n0 + images (in groups of 16), tile rows ty0 .. ty0 +
// tile_rows; and the layout of its V and M: `columns` columns, (group, tile row, tile)
// * 16 + image, in rows ld floats apart, the elements v_stride (V) and m_stride (M)
// floats apart.
struct LaneTask {
  int64_t n0, images, groups, ty0, tile_rows;
  int64_t group_columns, columns, ld, v_stride, m_stride;
  LaneTask(const Conv2dGeom& g, const LaneTasks& tasks, int64_t task)
      : n0(task / tasks.blocks * tasks.groups_per_task * kLanes),
        images(std::min(tasks.groups_per_task * kLanes, g.N - n0)),
        groups((images + kLanes - 1) / kLanes),
        ty0(task % tasks.blocks * tasks.rows_per_block),
        tile_rows(std::min(tasks.rows_per_block, tasks.tiles.th - ty0)),
        group_columns(tile_rows * tasks.tiles.tw * kLanes),
        columns(groups * group_columns),
        ld(odd_lines(columns)),
        v_stride(odd_lines(g.C * ld)),
        m_stride(odd_lines(g.K * ld)) {}
  int64_t group_images(int64_t group) const { return std::min(kLanes, images - group * kLanes); }
  // The input rows its patches read (those inside the image), as a range of floats of
  // a plane.
  int64_t first_input(const Conv2dGeom& g) const { return std::max<int64_t>(0, kTile * ty0 - g.pad_h) * g.W; }
  int64_t end_input(const Conv2dGeom& g) const {
    return std::min<int64_t>(g.H, kTile * ty0 - g.pad_h + kTile * tile_rows + kPatch - kTile) * g.W;
  }
  // Its output rows (those inside the map), likewise.
  int64_t first_output(const Conv2dGeom& g) const { return kTile * ty0 * g.Q; }
  int64_t end_output(const Conv2dGeom& g) const { return std::min(g.P, kTile * (ty0 + tile_rows)) * g.Q; }
};

// Image e of a task's rows [first, end) in each of the `planes` planes of a tensor, for
// SgemmPrefetch: one run a plane.
SgemmPrefetch::Range rows_of_planes(const float* tensor, const LaneTask& task, int64_t e, int64_t planes,
                                    int64_t plane, int64_t first, int64_t end) {
  return SgemmPrefetch::Range::runs_of_floats(tensor + ((task.n0 + e) * planes) * plane + first, end - first, planes,
                                              plane);
}

// Rows of a plane of 16 images into `rows`, pixel by pixel, 16 images a pixel: the
// floats [first, end) of each image's plane (`width` floats a row; the planes `image`
// floats apart from `plane` on; those past `images` read as zero), pixel (h, w) to
// rows + ((h - row0) * row_width + w + column0) * 16. 16 pixels of each image at a time,
// transposed into 16 pixels of 16 images each; a run of 16 may cross from one row into
// the next.
POLYAK_WINOGRAD_LANES_INLINE void gather_images(const float* plane, int64_t image, int64_t images, int64_t first,
                                                int64_t end, int64_t width, int64_t row0, int64_t column0,
                                                int64_t row_width, float* rows) {
  for (int64_t from = first; from < end; from += kLanes) {
    const int64_t pixels = std::min(kLanes, end - from);
    __m512 r[kLanes];
    for (int64_t i = 0; i < kLanes; ++i)
      r[i] = i < images ? _mm512_maskz_loadu_ps(first_lanes(pixels), plane + i * image + from) : _mm512_setzero_ps();
    transpose_16x16(r);
    int64_t h = from / width, w = from - h * width;
    for (int64_t j = 0; j < pixels; ++j) {
      _mm512_store_ps(rows + ((h - row0) * row_width + w + column0) * kLanes, r[j]);
      if (++w == width) w = 0, ++h;
    }
  }
}

// A thread's memory for its tasks, kept from call to call and shared by the forward and
// the filter gradient (never at once on one thread), each buffer cache-line aligned:
// the task's input rows (`rows`), V, M (or dM), and its output rows (or dy's).
struct LaneBuffers {
  float *rows, *V, *M, *out;
};
LaneBuffers lane_buffers(const Conv2dGeom& g, const LaneTasks& tasks) {
  thread_local std::vector<float> rows_buffer, patch_buffer, product_buffer, out_buffer;
  const int64_t ld_max = odd_lines(tasks.max_columns()), tw = tasks.tiles.tw;
  const int64_t patch_rows = kTile * tasks.rows_per_block + kPatch - kTile, patch_width = kTile * tw + kPatch - kTile;
  return {line_aligned(scratch(rows_buffer, patch_rows * patch_width * kLanes + 16)),
          line_aligned(scratch(patch_buffer, kElements * (g.C * ld_max + kLanes) + 16)),
          line_aligned(scratch(product_buffer, kElements * (g.K * ld_max + kLanes) + 16)),
          line_aligned(scratch(out_buffer, kTile * tasks.rows_per_block * kTile * tw * kLanes + 16))};
}

// What a task reads of a tensor's planes, and where it goes in `rows` (gather_images):
// the floats [first, end) of each plane, `width` a row, pixel (h, w) to row h - row0,
// column w + column0 of rows that are row_width pixels wide.
struct RowWindow {
  int64_t first, end, width, row0, column0, row_width;
};

// The 36 elements of every tile of the task, plane by plane and group by group: the
// group's rows of the plane into `rows`, then each tile's n x n pixels there through
// `times` (down the columns, then along the rows) into out[e * e_stride + plane * ld +
// column]. `planes` planes of `plane` floats an image.
template <int n, void (*times)(const __m512*, __m512*)>
POLYAK_WINOGRAD_LANES_INLINE void transform_planes(const float* tensor, int64_t planes, int64_t plane, const LaneTask& task,
                                                   int64_t tw, const RowWindow& window, float* rows, float* out,
                                                   int64_t e_stride) {
  const int64_t image = planes * plane, row_width = window.row_width;
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t group = 0; group < task.groups; ++group) {
      gather_images(tensor + (task.n0 + group * kLanes) * image + p * plane, image, task.group_images(group),
                    window.first, window.end, window.width, window.row0, window.column0, row_width, rows);
      float* const o = out + p * task.ld + group * task.group_columns;
      for (int64_t ty = 0; ty < task.tile_rows; ++ty)
        for (int64_t tx = 0; tx < tw; ++tx)
          transform_tile<n, kPatch, times>(rows + (kTile * ty * row_width + kTile * tx) * kLanes, row_width * kLanes,
                                           kLanes, o + (ty * tw + tx) * kLanes, kPatch * e_stride, e_stride);
    }
}

// V[e][c][column] (rows task.ld apart, elements task.v_stride apart) = (B^T d B)[e] for
// the task's tiles, from x's padded input rows (zero where the padding is).
POLYAK_WINOGRAD_LANES void lanes_transform_patches(const Conv2dGeom& g, const LaneTasks& tasks, const LaneTask& task,
                                                   const float* x, float* rows, float* V) {
  const int64_t tw = tasks.tiles.tw;
  const RowWindow window{task.first_input(g), task.end_input(g), g.W, kTile * task.ty0 - g.pad_h, g.pad_w,
                         kTile * tw + kPatch - kTile};
  std::fill(rows, rows + (kTile * task.tile_rows + kPatch - kTile) * window.row_width * kLanes, 0.0f);
  transform_planes<kPatch, times_bt>(x, g.C, g.H * g.W, task, tw, window, rows, V, task.v_stride);
}

// y = act(A^T M A + bias + residual) for the task's tiles, output channel by channel
// and group by group: the 4x4 pixels of every tile for 16 images into `out` (the
// block's output rows, pixel by pixel, 16 images a pixel), then 16 pixels at a time
// transposed into 16 pixels of each image and written with the epilogue.
POLYAK_WINOGRAD_LANES void lanes_transform_outputs(const Conv2dGeom& g, const LaneTasks& tasks, const LaneTask& task,
                                                   const float* M, const float* bias, const Epilogue& epilogue,
                                                   float* out, float* y) {
  const int64_t tw = tasks.tiles.tw, row_width = kTile * tw, image = g.K * g.P * g.Q;
  const int64_t p0 = kTile * task.ty0, first = task.first_output(g), end = task.end_output(g);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t k = 0; k < g.K; ++k)
    for (int64_t group = 0; group < task.groups; ++group) {
      const float* const m = M + k * task.ld + group * task.group_columns;
      for (int64_t ty = 0; ty < task.tile_rows; ++ty)
        for (int64_t tx = 0; tx < tw; ++tx)
          transform_tile<kPatch, kTile, times_at>(m + (ty * tw + tx) * kLanes, kPatch * task.m_stride, task.m_stride,
                                                  out + (kTile * ty * row_width + kTile * tx) * kLanes,
                                                  row_width * kLanes, kLanes);
      const __m512 shift = _mm512_set1_ps(bias ? bias[k] : 0.0f);
      const int64_t n0 = task.n0 + group * kLanes;
      for (int64_t from = first; from < end; from += kLanes) {
        const int64_t pixels = std::min(kLanes, end - from);
        __m512 r[kLanes];
        int64_t p = from / g.Q, q = from - p * g.Q;
        for (int64_t j = 0; j < kLanes; ++j) {  // past `pixels`: the last again (its lanes are not stored)
          r[j] = _mm512_load_ps(out + ((p - p0) * row_width + q) * kLanes);
          if (j + 1 < pixels && ++q == g.Q) q = 0, ++p;
        }
        transpose_16x16(r);
        const __mmask16 mask = first_lanes(pixels);
        for (int64_t i = 0; i < task.group_images(group); ++i) {
          const int64_t at = (n0 + i) * image + k * g.P * g.Q + from;
          __m512 v = _mm512_add_ps(r[i], shift);
          if (epilogue.residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, epilogue.residual + at));
          if (epilogue.relu) v = _mm512_maskz_max_ps(kAll, v, zero);
          _mm512_mask_storeu_ps(y + at, mask, v);
        }
      }
    }
}

// dM[e][k][column] = (A dY A^T)[e] for the task's tiles, the adjoint of the output
// transform, from the output gradients dY of a tile (zero past P or Q).
POLYAK_WINOGRAD_LANES void lanes_transform_gradients(const Conv2dGeom& g, const LaneTasks& tasks,
                                                     const LaneTask& task, const float* dy, float* rows,
                                                     float* dM) {
  const int64_t tw = tasks.tiles.tw;
  const RowWindow window{task.first_output(g), task.end_output(g), g.Q, kTile * task.ty0, 0, kTile * tw};
  std::fill(rows, rows + kTile * task.tile_rows * window.row_width * kLanes, 0.0f);  // past P or Q stays zero
  transform_planes<kTile, times_a>(dy, g.K, g.P * g.Q, task, tw, window, rows, dM, task.m_stride);
}

// dw[k][c] (3x3) = G^T dU[k][c] G from the 36 elements dU[e][k][c]: the adjoint of the
// filter transform.
void transform_filter_gradients(const Conv2dGeom& g, const float* dU, float* dw) {
  const int64_t KC = g.K * g.C;
  parallel_for(KC, 64, [&](int64_t begin, int64_t end) {
    for (int64_t kc = begin; kc < end; ++kc) {
      float gt_du[3][kPatch];  // G^T dU, [row][column]
      for (int j = 0; j < kPatch; ++j) {
        float column[kPatch], f[3];
        for (int i = 0; i < kPatch; ++i) column[i] = dU[(kPatch * i + j) * KC + kc];
        times_gt(column, f);
        for (int i = 0; i < 3; ++i) gt_du[i][j] = f[i];
      }
      for (int r = 0; r < 3; ++r) times_gt(gt_du[r], dw + kc * 9 + 3 * r);  // (G^T dU) G, row r
    }
  });
}

// What forward product e requests as it runs, for what follows the products: image e's
// output rows of the task (written, and read as the residual), and its input rows of
// the thread's next task.
SgemmPrefetch lanes_prefetch(const Conv2dGeom& g, const LaneTask& task, const LaneTask* next, int64_t e,
                             const float* x, const float* residual, const float* y) {
  SgemmPrefetch prefetch;
  const int64_t out_plane = g.P * g.Q, in_plane = g.H * g.W;
  if (e < task.images) {
    const int64_t first = task.first_output(g), end = task.end_output(g);
    prefetch.write = rows_of_planes(y, task, e, g.K, out_plane, first, end);
    if (residual) prefetch.reads[0] = rows_of_planes(residual, task, e, g.K, out_plane, first, end);
  }
  if (next && e < next->images)
    prefetch.reads[1] = rows_of_planes(x, *next, e, g.C, in_plane, next->first_input(g), next->end_input(g));
  return prefetch;
}

void lanes_forward(const Conv2dGeom& g, const float* x, const std::array<SgemmPackedA, kElements>& packed,
                   const float* bias, const Epilogue& epilogue, float* y) {
  const LaneTasks tasks(g, kLanesBlockBytes, std::numeric_limits<int64_t>::max());
  const int64_t flop_per_task = 2 * kElements * g.K * g.C * tasks.max_columns();
  parallel_for(tasks.count(), flop_per_task, [&](int64_t begin, int64_t end) {
    const LaneBuffers buffers = lane_buffers(g, tasks);
    for (int64_t t = begin; t < end; ++t) {
      const LaneTask task(g, tasks, t);
      lanes_transform_patches(g, tasks, task, x, buffers.rows, buffers.V);
      const LaneTask next_task(g, tasks, std::min(t + 1, end - 1));
      const LaneTask* const next = t + 1 < end ? &next_task : nullptr;
      for (int64_t e = 0; e < kElements; ++e) {
        const SgemmPrefetch prefetch = lanes_prefetch(g, task, next, e, x, epilogue.residual, y);
        sgemm_packed_a(packed[e], false, task.columns, 1.0f, buffers.V + e * task.v_stride, task.ld, nullptr, 0.0f,
                       buffers.M + e * task.m_stride, task.ld, prefetch);
      }
      lanes_transform_outputs(g, tasks, task, buffers.M, bias, epilogue, buffers.out, y);
    }
  });
}

}  // namespace

bool winograd_lanes_available() { return sgemm_isa_available(SgemmIsa::Avx512); }

void winograd_lanes_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias,
                            const Epilogue& epilogue, float* y) {
  thread_local std::vector<float> filter_buffer;
  thread_local std::array<SgemmPackedA, kElements> packed;
  pack_filters(g, w, filter_buffer, packed);
  lanes_forward(g, x, packed, bias, epilogue, y);
}

// The filter gradient, Winograd's adjoint: dU[e] (K x C) = the sum over the tasks of
// dM[e] (K x columns) * V[e]^T, each task's V as the forward makes it and dM from dy;
// then dw = G^T dU G. The sum runs in one partial per thread (sum_in_slots).
void winograd_lanes_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw) {
  const LaneTasks tasks(g, kLanesBlockBytes, kLanesGradientColumns);
  const int64_t KC = g.K * g.C;
  thread_local std::vector<float> gradient_buffer;
  float* const dU = scratch(gradient_buffer, kElements * KC);
  const int64_t flop_per_task = 2 * kElements * KC * tasks.max_columns();
  sum_in_slots(tasks.count(), kElements * KC, flop_per_task, dU, [&](int64_t begin, int64_t end, float* acc) {
    const LaneBuffers buffers = lane_buffers(g, tasks);  // M holds dM, `out` dy's rows
    for (int64_t t = begin; t < end; ++t) {
      const LaneTask task(g, tasks, t);
      lanes_transform_patches(g, tasks, task, x, buffers.rows, buffers.V);
      lanes_transform_gradients(g, tasks, task, dy, buffers.out, buffers.M);
      // Image e's rows of the next task, input and output gradient, requested during
      // product e.
      const LaneTask next(g, tasks, std::min(t + 1, end - 1));
      for (int64_t e = 0; e < kElements; ++e) {
        SgemmPrefetch prefetch;
        if (t + 1 < end && e < next.images) {
          prefetch.reads[0] = rows_of_planes(x, next, e, g.C, g.H * g.W, next.first_input(g), next.end_input(g));
          prefetch.reads[1] = rows_of_planes(dy, next, e, g.K, g.P * g.Q, next.first_output(g), next.end_output(g));
        }
        sgemm(false, true, g.K, g.C, task.columns, 1.0f, buffers.M + e * task.m_stride, task.ld,
              buffers.V + e * task.v_stride, task.ld, t == begin ? 0.0f : 1.0f, acc + e * KC, g.C, prefetch);
      }
    }
  });
  transform_filter_gradients(g, dU, dw);
}

#else  // not x86-64: no AVX-512, so no lanes (winograd_lanes_available is false)

bool winograd_lanes_available() { return false; }

void winograd_lanes_forward(const Conv2dGeom&, const float*, const float*, const float*, const Epilogue&, float*) {
  throw std::logic_error("winograd_lanes_forward: needs AVX-512 (x86-64)");
}

void winograd_lanes_backward_filter(const Conv2dGeom&, const float*, const float*, float*) {
  throw std::logic_error("winograd_lanes_backward_filter: needs AVX-512 (x86-64)");
}

#endif

}  // namespace polyak::cpu
