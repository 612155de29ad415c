// 2-D max and average pooling on the CPU, one (n, c) plane per task.
//
// Output pixel (p, q) looks at the window of rows h in [p*sh - ph, p*sh - ph + kh)
// and columns w in [q*sw - pw, q*sw - pw + kw) of its input plane (H x W).
//
// Max pooling: y = the largest x in the window, where padding counts as -inf (it is
// never selected, as in PyTorch). The forward saves argmax, the flat index h*W + w of
// the winner inside its plane, and the backward routes each dy to that one input:
//   dx[argmax[p,q]] += dy[p,q]  (windows may overlap, so several dy can meet).
// A NaN in the window wins (the last one), so that it propagates as in PyTorch.
//
// Average pooling (count_include_pad = True, PyTorch's default): padding counts as
// zeros and the divisor is always kh*kw:
//   y[p,q] = (1 / (kh*kw)) * sum of x over the window's in-image part
//   dx[h,w] = sum over the windows (p,q) that contain (h,w) of dy[p,q] / (kh*kw)
// (With ceil_mode off and padding at most half the kernel, no window reaches past the
// padded image, so kh*kw is also PyTorch's divisor at the borders.)
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

namespace {

// The in-image part [lo, hi) of the window that starts at `start` and spans `k`.
inline void clip(int64_t start, int64_t k, int64_t size, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(start, 0);
  hi = std::min<int64_t>(start + k, size);
}

// The 2x2 window with stride 2 and no padding (every window wholly inside the image),
// with AVX-512: up to 16 outputs of a row at a time, the two input rows loaded as two
// vectors each and split into even and odd columns (the windows' left and right), then
// the four corners compared in the general loop's order, (0,0), (0,1), (1,0), (1,1),
// a later one taking over when larger or NaN. Masked compares and moves, no branches:
// scalar code, with its data-dependent branches mispredicted on real activations, took
// 6 times as long (docs/PERFORMANCE.md, "Max pooling 2x2").
#if defined(__x86_64__)
__attribute__((target("avx512f"))) void max_pool_2x2_avx512(const Pool2dGeom& g, const float* x, float* y,
                                                             int32_t* argmax) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i width = _mm512_set1_epi32(static_cast<int32_t>(g.W));
  parallel_for(g.N * g.C, 4 * PQ, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane)
      for (int64_t p = 0; p < g.P; ++p) {
        const float* top = x + plane * HW + 2 * p * g.W;
        for (int64_t q0 = 0; q0 < g.Q; q0 += 16) {
          const int64_t n = std::min<int64_t>(16, g.Q - q0);  // outputs here, from 2n input columns
          const __mmask16 low = static_cast<__mmask16>(n >= 8 ? 0xffff : (1u << (2 * n)) - 1);
          const __mmask16 high = static_cast<__mmask16>(n <= 8 ? 0 : (1u << (2 * n - 16)) - 1);
          const auto split = [&](const float* row, __m512& left, __m512& right) {
            const __m512 a = _mm512_maskz_loadu_ps(low, row + 2 * q0), b = _mm512_maskz_loadu_ps(high, row + 2 * q0 + 16);
            left = _mm512_permutex2var_ps(a, even, b);
            right = _mm512_permutex2var_ps(a, odd, b);
          };
          __m512 top_left, top_right, bottom_left, bottom_right;
          split(top, top_left, top_right);
          split(top + g.W, bottom_left, bottom_right);
          const __m512i corner = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(2 * p * g.W + 2 * q0)), even);
          __m512 best = top_left;
          __m512i best_at = corner;
          const auto keep_larger = [&](__m512 v, __m512i at) {
            const __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            best = _mm512_mask_mov_ps(best, take, v);
            best_at = _mm512_mask_mov_epi32(best_at, take, at);
          };
          keep_larger(top_right, _mm512_add_epi32(corner, _mm512_set1_epi32(1)));
          keep_larger(bottom_left, _mm512_add_epi32(corner, width));
          keep_larger(bottom_right, _mm512_add_epi32(_mm512_add_epi32(corner, width), _mm512_set1_epi32(1)));
          const __mmask16 out = static_cast<__mmask16>((1u << n) - 1);
          const int64_t at = plane * PQ + p * g.Q + q0;
          _mm512_mask_storeu_ps(y + at, out, best);
          _mm512_mask_storeu_epi32(argmax + at, out, best_at);
        }
      }
  });
}

bool has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#endif

}  // namespace

void cpu::max_pool2d_forward(const Pool2dGeom& g, const float* x, float* y, int32_t* argmax) {
#if defined(__x86_64__)
  if (g.kh == 2 && g.kw == 2 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 0 && g.pad_w == 0 && has_avx512())
    return max_pool_2x2_avx512(g, x, y, argmax);
#endif
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  parallel_for(g.N * g.C, std::max<int64_t>(1, PQ * g.kh * g.kw), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const float* xp = x + plane * HW;
      float* yp = y + plane * PQ;
      int32_t* ap = argmax + plane * PQ;
      for (int64_t p = 0; p < g.P; ++p) {
        int64_t h_lo, h_hi;
        clip(p * g.stride_h - g.pad_h, g.kh, g.H, h_lo, h_hi);
        for (int64_t q = 0; q < g.Q; ++q) {
          int64_t w_lo, w_hi;
          clip(q * g.stride_w - g.pad_w, g.kw, g.W, w_lo, w_hi);
          float best = -std::numeric_limits<float>::infinity();
          int64_t best_at = -1;  // stays -1 only for a window wholly inside the padding
          for (int64_t h = h_lo; h < h_hi; ++h) {
            for (int64_t w = w_lo; w < w_hi; ++w) {
              const float v = xp[h * g.W + w];
              if (best_at < 0 || v > best || std::isnan(v)) {
                best = v;
                best_at = h * g.W + w;
              }
            }
          }
          yp[p * g.Q + q] = best;
          ap[p * g.Q + q] = static_cast<int32_t>(best_at);
        }
      }
    }
  });
}

void cpu::max_pool2d_backward(const Pool2dGeom& g, const float* dy, const int32_t* argmax, float* dx) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  parallel_for(g.N * g.C, std::max<int64_t>(1, PQ + HW), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      float* dxp = dx + plane * HW;
      const float* dyp = dy + plane * PQ;
      const int32_t* ap = argmax + plane * PQ;
      std::memset(dxp, 0, sizeof(float) * HW);
      for (int64_t i = 0; i < PQ; ++i)
        if (ap[i] >= 0) dxp[ap[i]] += dyp[i];
    }
  });
}

void cpu::avg_pool2d_forward(const Pool2dGeom& g, const float* x, float* y) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  const float scale = 1.0f / static_cast<float>(g.kh * g.kw);
  parallel_for(g.N * g.C, std::max<int64_t>(1, PQ * g.kh * g.kw), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const float* xp = x + plane * HW;
      float* yp = y + plane * PQ;
      for (int64_t p = 0; p < g.P; ++p) {
        int64_t h_lo, h_hi;
        clip(p * g.stride_h - g.pad_h, g.kh, g.H, h_lo, h_hi);
        for (int64_t q = 0; q < g.Q; ++q) {
          int64_t w_lo, w_hi;
          clip(q * g.stride_w - g.pad_w, g.kw, g.W, w_lo, w_hi);
          float total = 0.0f;
          for (int64_t h = h_lo; h < h_hi; ++h)
            for (int64_t w = w_lo; w < w_hi; ++w) total += xp[h * g.W + w];
          yp[p * g.Q + q] = total * scale;
        }
      }
    }
  });
}

void cpu::avg_pool2d_backward(const Pool2dGeom& g, const float* dy, float* dx) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  const float scale = 1.0f / static_cast<float>(g.kh * g.kw);
  parallel_for(g.N * g.C, std::max<int64_t>(1, PQ * g.kh * g.kw + HW), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      float* dxp = dx + plane * HW;
      const float* dyp = dy + plane * PQ;
      std::memset(dxp, 0, sizeof(float) * HW);
      for (int64_t p = 0; p < g.P; ++p) {
        int64_t h_lo, h_hi;
        clip(p * g.stride_h - g.pad_h, g.kh, g.H, h_lo, h_hi);
        for (int64_t q = 0; q < g.Q; ++q) {
          int64_t w_lo, w_hi;
          clip(q * g.stride_w - g.pad_w, g.kw, g.W, w_lo, w_hi);
          const float share = dyp[p * g.Q + q] * scale;
          for (int64_t h = h_lo; h < h_hi; ++h)
            for (int64_t w = w_lo; w < w_hi; ++w) dxp[h * g.W + w] += share;
        }
      }
    }
  });
}

}  // namespace polyak
