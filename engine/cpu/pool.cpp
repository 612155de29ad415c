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

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

namespace {

// The in-image part [lo, hi) of the window that starts at `start` and spans `k`.
inline void clip(int64_t start, int64_t k, int64_t size, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(start, 0);
  hi = std::min<int64_t>(start + k, size);
}

// One step of the window scan: v (at flat index `index`) replaces the best so far when
// larger, or when NaN (the last NaN wins), as the general loop below decides. Written
// without branches so that the 2x2 loop vectorises.
inline void keep_larger(float v, int32_t index, float& best, int32_t& best_at) {
  const bool take = v > best || v != v;
  best = take ? v : best;
  best_at = take ? index : best_at;
}

// The 2x2 window with stride 2 and no padding (every window wholly inside the image),
// scanned in the general loop's order: (0,0), (0,1), (1,0), (1,1).
void max_pool_2x2(const Pool2dGeom& g, const float* x, float* y, int32_t* argmax) {
  const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
  parallel_for(g.N * g.C, 4 * PQ, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane)
      for (int64_t p = 0; p < g.P; ++p) {
        const float* top = x + plane * HW + 2 * p * g.W;
        const float* bottom = top + g.W;
        float* yp = y + plane * PQ + p * g.Q;
        int32_t* ap = argmax + plane * PQ + p * g.Q;
        const auto row = static_cast<int32_t>(2 * p * g.W), width = static_cast<int32_t>(g.W);
#pragma omp simd
        for (int64_t q = 0; q < g.Q; ++q) {
          const auto column = static_cast<int32_t>(2 * q);
          float best = top[2 * q];
          int32_t best_at = row + column;
          keep_larger(top[2 * q + 1], row + column + 1, best, best_at);
          keep_larger(bottom[2 * q], row + width + column, best, best_at);
          keep_larger(bottom[2 * q + 1], row + width + column + 1, best, best_at);
          yp[q] = best;
          ap[q] = best_at;
        }
      }
  });
}

}  // namespace

void cpu::max_pool2d_forward(const Pool2dGeom& g, const float* x, float* y, int32_t* argmax) {
  if (g.kh == 2 && g.kw == 2 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 0 && g.pad_w == 0)
    return max_pool_2x2(g, x, y, argmax);
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
