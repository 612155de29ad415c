// Winograd's F(2x2, 3x3) (winograd.cpp has the method) with 16 images in the lanes of
// AVX-512 vectors, for small maps: the forward and the filter gradient. x86-64 only (the
// intrinsics under a target attribute, called where the CPU has AVX-512); elsewhere
// winograd_lanes_available() is false, so conv_supports never offers WinogradLanes.
//
// On small maps a row of tiles is short (4 tiles at 8x8), and the loops of
// winograd.cpp, which run along it, are mostly overhead. Here the 16 lanes of an
// AVX-512 vector hold the same pixel of 16 images instead, so every step of a transform
// is one vector operation whatever the map's size: a tile's 16 elements, for 16 images,
// are 16 vectors. Images come in and go out through 16 x 16 transposes in registers: 16
// consecutive pixels of each of 16 images in, each pixel across the images out, and
// back for the outputs.
//
// The work is split into tasks: a group of 16 images by a block of whole tile rows,
// up to about 1 MiB each of V and M (16 x C x columns floats, columns = 16 x the block's
// tiles). A task transforms its patches channel by channel, runs the 16 products,
// then transforms them back channel by channel and writes its outputs with the
// epilogue. Between the products it prefetches what the epilogue reads and writes (an
// image's lines per product) and the next task's input rows. The filter gradient runs
// the same tasks on x and dy (winograd_lanes_backward_filter).
//
// V is stored V[e][c][column] with its rows ld floats apart, ld an odd number of cache
// lines, and the elements e an odd number of lines apart as well (M likewise): a
// transform writes the 16 elements of a tile, a product reads the C rows of one
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
// (channels last), but for a near tie on the narrowest layers when the tensors come
// from DRAM (measurements: docs/PERFORMANCE.md, "Winograd lanes: filter gradient").
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
#include "engine/cpu/winograd_parts.h"
#include "engine/parallel.h"

namespace polyak::cpu {

#if defined(__x86_64__)

namespace {

#define POLYAK_WINOGRAD_LANES __attribute__((target("avx512f,prfchw")))
#define POLYAK_WINOGRAD_LANES_INLINE POLYAK_WINOGRAD_LANES inline __attribute__((always_inline))

constexpr int64_t kLanes = 16;
// The bytes of V (and of M) per task: tile rows are added to a task while they fit.
// Larger tasks read fewer rows twice (a task's patches reach one row into the next
// task's on either side) and run wider products; beyond 1 MiB nothing more was gained
// (measurements: docs/PERFORMANCE.md, "Winograd lanes: task size").
constexpr int64_t kLanesBlockBytes = 1024 * 1024;
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

// A floats pointer rounded up to a cache line (the scratch holds 16 floats more).
float* line_aligned(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~static_cast<uintptr_t>(63));
}

// The tasks of a call: groups of 16 images by blocks of tile rows, as many rows as
// make block_bytes of V (or M) and at most column_cap columns, and at least one.
struct LaneTasks {
  Tiles tiles;
  int64_t rows_per_block, blocks, groups;
  LaneTasks(const Conv2dGeom& g, int64_t block_bytes, int64_t column_cap)
      : tiles(g),
        rows_per_block(std::clamp<int64_t>(
            std::min(block_bytes / (kElements * std::max(g.C, g.K) * 4), column_cap) / (tiles.tw * kLanes), 1,
            tiles.th)),
        blocks((tiles.th + rows_per_block - 1) / rows_per_block),
        groups((g.N + kLanes - 1) / kLanes) {}
  int64_t count() const { return groups * blocks; }
  int64_t max_columns() const { return rows_per_block * tiles.tw * kLanes; }
};

// The least stride of at least `floats` floats (a multiple of 16) that is an odd number
// of cache lines: V's and M's rows and elements.
int64_t odd_lines(int64_t floats) { return floats / kLanes % 2 ? floats : floats + kLanes; }

// One task: images n0 .. n0 + images, tile rows ty0 .. ty0 + tile_rows; and the layout
// of its V and M: `columns` columns (16 a tile) in rows ld floats apart, the elements
// v_stride (V) and m_stride (M) floats apart.
struct LaneTask {
  int64_t n0, images, ty0, tile_rows;
  int64_t columns, ld, v_stride, m_stride;
  LaneTask(const Conv2dGeom& g, const LaneTasks& tasks, int64_t task)
      : n0(task / tasks.blocks * kLanes),
        images(std::min(kLanes, g.N - n0)),
        ty0(task % tasks.blocks * tasks.rows_per_block),
        tile_rows(std::min(tasks.rows_per_block, tasks.tiles.th - ty0)),
        columns(tile_rows * tasks.tiles.tw * kLanes),
        ld(odd_lines(columns)),
        v_stride(odd_lines(g.C * ld)),
        m_stride(odd_lines(g.K * ld)) {}
  // The input rows its patches read (those inside the image), as a range of floats of
  // a plane.
  int64_t first_input(const Conv2dGeom& g) const { return std::max<int64_t>(0, 2 * ty0 - g.pad_h) * g.W; }
  int64_t end_input(const Conv2dGeom& g) const {
    return std::min<int64_t>(g.H, 2 * ty0 - g.pad_h + 2 * tile_rows + 2) * g.W;
  }
  // Its output rows (those inside the map), likewise.
  int64_t first_output(const Conv2dGeom& g) const { return 2 * ty0 * g.Q; }
  int64_t end_output(const Conv2dGeom& g) const { return std::min(g.P, 2 * ty0 + 2 * tile_rows) * g.Q; }
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
  return {line_aligned(scratch(rows_buffer, (2 * tasks.rows_per_block + 2) * (2 * tw + 2) * kLanes + 16)),
          line_aligned(scratch(patch_buffer, kElements * (g.C * ld_max + kLanes) + 16)),
          line_aligned(scratch(product_buffer, kElements * (g.K * ld_max + kLanes) + 16)),
          line_aligned(scratch(out_buffer, 2 * tasks.rows_per_block * 2 * tw * kLanes + 16))};
}

// V[e][c][column] (rows task.ld apart, elements task.v_stride apart) = (B^T d B)[e] for
// the task's tiles, column (tile row, tile) * 16 + image. `rows`: the task's padded input
// rows for one channel, pixel by pixel, 16 images a pixel (zero where the padding is).
POLYAK_WINOGRAD_LANES void lanes_transform_patches(const Conv2dGeom& g, const LaneTasks& tasks, const LaneTask& task,
                                                   const float* x, float* rows, float* V) {
  const int64_t ld = task.ld, e_stride = task.v_stride;
  const int64_t tw = tasks.tiles.tw, row_width = 2 * tw + 2, image = g.C * g.H * g.W;
  const int64_t h0 = 2 * task.ty0 - g.pad_h;  // the input row of rows' first row
  std::fill(rows, rows + (2 * task.tile_rows + 2) * row_width * kLanes, 0.0f);
  const int64_t first = task.first_input(g), end = task.end_input(g);  // in the plane, row by row
  for (int64_t c = 0; c < g.C; ++c) {
    gather_images(x + task.n0 * image + c * g.H * g.W, image, task.images, first, end, g.W, h0, g.pad_w, row_width,
                  rows);
    for (int64_t ty = 0; ty < task.tile_rows; ++ty)
      for (int64_t tx = 0; tx < tw; ++tx) {
        const float* d = rows + (2 * ty * row_width + 2 * tx) * kLanes;  // the patch's top left pixel
        __m512 bt_d[4][4];                                                 // B^T d
        for (int j = 0; j < 4; ++j) {
          const __m512 d0 = _mm512_load_ps(d + j * kLanes), d1 = _mm512_load_ps(d + (row_width + j) * kLanes);
          const __m512 d2 = _mm512_load_ps(d + (2 * row_width + j) * kLanes);
          const __m512 d3 = _mm512_load_ps(d + (3 * row_width + j) * kLanes);
          bt_d[0][j] = _mm512_sub_ps(d0, d2);
          bt_d[1][j] = _mm512_add_ps(d1, d2);
          bt_d[2][j] = _mm512_sub_ps(d2, d1);
          bt_d[3][j] = _mm512_sub_ps(d1, d3);
        }
        float* v = V + c * ld + (ty * tw + tx) * kLanes;
        for (int i = 0; i < 4; ++i) {  // (B^T d) B, row i
          const __m512* b = bt_d[i];
          _mm512_store_ps(v + (4 * i) * e_stride, _mm512_sub_ps(b[0], b[2]));
          _mm512_store_ps(v + (4 * i + 1) * e_stride, _mm512_add_ps(b[1], b[2]));
          _mm512_store_ps(v + (4 * i + 2) * e_stride, _mm512_sub_ps(b[2], b[1]));
          _mm512_store_ps(v + (4 * i + 3) * e_stride, _mm512_sub_ps(b[1], b[3]));
        }
      }
  }
}

// y = act(A^T M A + bias + residual) for the task's tiles, output channel by channel:
// the 2x2 pixels of every tile for 16 images into `out` (the block's output rows, pixel
// by pixel, 16 images a pixel), then 16 pixels at a time transposed into 16 pixels of
// each image and written with the epilogue.
POLYAK_WINOGRAD_LANES void lanes_transform_outputs(const Conv2dGeom& g, const LaneTasks& tasks, const LaneTask& task,
                                                   const float* M, const float* bias, const Epilogue& epilogue,
                                                   float* out, float* y) {
  const int64_t tw = tasks.tiles.tw, row_width = 2 * tw, image = g.K * g.P * g.Q;
  const int64_t ld = task.ld, e_stride = task.m_stride;
  const int64_t p0 = 2 * task.ty0, first = task.first_output(g), end = task.end_output(g);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t k = 0; k < g.K; ++k) {
    for (int64_t ty = 0; ty < task.tile_rows; ++ty)
      for (int64_t tx = 0; tx < tw; ++tx) {
        const float* m = M + k * ld + (ty * tw + tx) * kLanes;
        __m512 at_m[2][4];  // A^T m
        for (int j = 0; j < 4; ++j) {
          const __m512 m0 = _mm512_load_ps(m + j * e_stride), m1 = _mm512_load_ps(m + (4 + j) * e_stride);
          const __m512 m2 = _mm512_load_ps(m + (8 + j) * e_stride), m3 = _mm512_load_ps(m + (12 + j) * e_stride);
          at_m[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
          at_m[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
        }
        for (int i = 0; i < 2; ++i) {  // (A^T m) A, row i
          const __m512* a = at_m[i];
          float* o = out + ((2 * ty + i) * row_width + 2 * tx) * kLanes;
          _mm512_store_ps(o, _mm512_add_ps(_mm512_add_ps(a[0], a[1]), a[2]));
          _mm512_store_ps(o + kLanes, _mm512_sub_ps(_mm512_sub_ps(a[1], a[2]), a[3]));
        }
      }
    const __m512 shift = _mm512_set1_ps(bias ? bias[k] : 0.0f);
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
      for (int64_t i = 0; i < task.images; ++i) {
        const int64_t at = (task.n0 + i) * image + k * g.P * g.Q + from;
        __m512 v = _mm512_add_ps(r[i], shift);
        if (epilogue.residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, epilogue.residual + at));
        if (epilogue.relu) v = _mm512_maskz_max_ps(kAll, v, zero);
        _mm512_mask_storeu_ps(y + at, mask, v);
      }
    }
  }
}

// dM[e][k][column] = (A dY A^T)[e] for the task's tiles, the adjoint of the output
// transform, from the output gradients dY of a tile (zero past P or Q): the task's rows
// of dy go into `rows` (gather_images) as the inputs do for the patches, channel by
// channel.
POLYAK_WINOGRAD_LANES void lanes_transform_gradients(const Conv2dGeom& g, const LaneTasks& tasks,
                                                     const LaneTask& task, const float* dy, float* rows,
                                                     float* dM) {
  const int64_t tw = tasks.tiles.tw, row_width = 2 * tw, image = g.K * g.P * g.Q;
  const int64_t ld = task.ld, e_stride = task.m_stride;
  const int64_t p0 = 2 * task.ty0, first = task.first_output(g), end = task.end_output(g);
  std::fill(rows, rows + 2 * task.tile_rows * row_width * kLanes, 0.0f);  // what lies past P or Q stays zero
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t k = 0; k < g.K; ++k) {
    gather_images(dy + task.n0 * image + k * g.P * g.Q, image, task.images, first, end, g.Q, p0, 0, row_width, rows);
    for (int64_t ty = 0; ty < task.tile_rows; ++ty)
      for (int64_t tx = 0; tx < tw; ++tx) {
        const float* d = rows + (2 * ty * row_width + 2 * tx) * kLanes;  // the tile's top left pixel
        const __m512 y00 = _mm512_load_ps(d), y01 = _mm512_load_ps(d + kLanes);
        const __m512 y10 = _mm512_load_ps(d + row_width * kLanes), y11 = _mm512_load_ps(d + (row_width + 1) * kLanes);
        // A dY, with A = (A^T)^T: rows y0, y0 + y1, y0 - y1, -y1 of dY's rows y0, y1
        const __m512 a_dy[4][2] = {{y00, y01},
                                   {_mm512_add_ps(y00, y10), _mm512_add_ps(y01, y11)},
                                   {_mm512_sub_ps(y00, y10), _mm512_sub_ps(y01, y11)},
                                   {_mm512_sub_ps(zero, y10), _mm512_sub_ps(zero, y11)}};
        float* m = dM + k * ld + (ty * tw + tx) * kLanes;
        for (int i = 0; i < 4; ++i) {  // (A dY) A^T, row i: columns t0, t0 + t1, t0 - t1, -t1
          const __m512 t0 = a_dy[i][0], t1 = a_dy[i][1];
          _mm512_store_ps(m + (4 * i) * e_stride, t0);
          _mm512_store_ps(m + (4 * i + 1) * e_stride, _mm512_add_ps(t0, t1));
          _mm512_store_ps(m + (4 * i + 2) * e_stride, _mm512_sub_ps(t0, t1));
          _mm512_store_ps(m + (4 * i + 3) * e_stride, _mm512_sub_ps(zero, t1));
        }
      }
  }
}

// dw[k][c] (3x3) = G^T dU[k][c] G from the 16 elements dU[e][k][c]: the adjoint of the
// filter transform.
void transform_filter_gradients(const Conv2dGeom& g, const float* dU, float* dw) {
  const int64_t KC = g.K * g.C;
  parallel_for(KC, 64, [&](int64_t begin, int64_t end) {
    for (int64_t kc = begin; kc < end; ++kc) {
      float t[3][4];  // G^T dU
      for (int j = 0; j < 4; ++j) {
        const float u0 = dU[j * KC + kc], u1 = dU[(4 + j) * KC + kc], u2 = dU[(8 + j) * KC + kc];
        const float u3 = dU[(12 + j) * KC + kc];
        t[0][j] = u0 + 0.5f * (u1 + u2);
        t[1][j] = 0.5f * (u1 - u2);
        t[2][j] = 0.5f * (u1 + u2) + u3;
      }
      float* f = dw + kc * 9;
      for (int r = 0; r < 3; ++r) {  // (G^T dU) G, row r
        f[3 * r] = t[r][0] + 0.5f * (t[r][1] + t[r][2]);
        f[3 * r + 1] = 0.5f * (t[r][1] - t[r][2]);
        f[3 * r + 2] = 0.5f * (t[r][1] + t[r][2]) + t[r][3];
      }
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
