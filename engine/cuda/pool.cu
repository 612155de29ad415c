// 2-D max and average pooling on the GPU (the CPU file: engine/cpu/pool.cpp, which
// states the math). Forward: one thread per output pixel. Backward: one thread per
// INPUT pixel, gathering from the windows that contain it, instead of scattering each
// dy with atomics: deterministic, and the windows are visited in increasing (p, q),
// the order in which the CPU adds them (with the same float roundings, so the results
// agree with the CPU's to the last bit unless a compiler fuses differently).
//
// Input pixel h lies in the windows of output rows p with
//   p*sh - ph <= h < p*sh - ph + kh   <=>   ceil((h + ph - kh + 1) / sh) <= p <= floor((h + ph) / sh)
// (clipped to [0, P)); columns likewise.
#include "engine/cuda/common.cuh"

namespace polyak {

using namespace cuda_detail;

namespace {

__device__ inline void window(int64_t start, int64_t k, int64_t size, int64_t& lo, int64_t& hi) {
  lo = max(start, int64_t{0});
  hi = min(start + k, size);
}

// The output positions p in [lo, hi) whose window (stride s, pad, kernel k) covers h.
__device__ inline void covering(int64_t h, int64_t k, int64_t s, int64_t pad, int64_t P, int64_t& lo, int64_t& hi) {
  const int64_t top = h + pad;  // p*s <= top and p*s > top - k
  lo = top - k + 1 <= 0 ? 0 : (top - k + 1 + s - 1) / s;
  hi = min(top / s + 1, P);
}

__global__ void max_pool_forward_kernel(Pool2dGeom g, int64_t total, const float* x, float* y, int32_t* argmax) {
  POLYAK_GRID_LOOP(i, total) {
    const int64_t q = i % g.Q, p = (i / g.Q) % g.P, plane = i / (g.P * g.Q);
    const float* xp = x + plane * g.H * g.W;
    int64_t h_lo, h_hi, w_lo, w_hi;
    window(p * g.stride_h - g.pad_h, g.kh, g.H, h_lo, h_hi);
    window(q * g.stride_w - g.pad_w, g.kw, g.W, w_lo, w_hi);
    float best = -INFINITY;
    int64_t best_at = -1;
    for (int64_t h = h_lo; h < h_hi; ++h) {
      for (int64_t w = w_lo; w < w_hi; ++w) {
        const float v = xp[h * g.W + w];
        if (best_at < 0 || v > best || isnan(v)) {
          best = v;
          best_at = h * g.W + w;
        }
      }
    }
    y[i] = best;
    argmax[i] = static_cast<int32_t>(best_at);
  }
}

__global__ void max_pool_backward_kernel(Pool2dGeom g, int64_t total, const float* dy, const int32_t* argmax,
                                         float* dx) {
  POLYAK_GRID_LOOP(i, total) {
    const int64_t w = i % g.W, h = (i / g.W) % g.H, plane = i / (g.H * g.W);
    const float* dyp = dy + plane * g.P * g.Q;
    const int32_t* ap = argmax + plane * g.P * g.Q;
    const int32_t me = static_cast<int32_t>(h * g.W + w);
    int64_t p_lo, p_hi, q_lo, q_hi;
    covering(h, g.kh, g.stride_h, g.pad_h, g.P, p_lo, p_hi);
    covering(w, g.kw, g.stride_w, g.pad_w, g.Q, q_lo, q_hi);
    float total_grad = 0.0f;
    for (int64_t p = p_lo; p < p_hi; ++p)
      for (int64_t q = q_lo; q < q_hi; ++q)
        if (ap[p * g.Q + q] == me) total_grad += dyp[p * g.Q + q];
    dx[i] = total_grad;
  }
}

__global__ void avg_pool_forward_kernel(Pool2dGeom g, int64_t total, float scale, const float* x, float* y) {
  POLYAK_GRID_LOOP(i, total) {
    const int64_t q = i % g.Q, p = (i / g.Q) % g.P, plane = i / (g.P * g.Q);
    const float* xp = x + plane * g.H * g.W;
    int64_t h_lo, h_hi, w_lo, w_hi;
    window(p * g.stride_h - g.pad_h, g.kh, g.H, h_lo, h_hi);
    window(q * g.stride_w - g.pad_w, g.kw, g.W, w_lo, w_hi);
    float sum = 0.0f;
    for (int64_t h = h_lo; h < h_hi; ++h)
      for (int64_t w = w_lo; w < w_hi; ++w) sum += xp[h * g.W + w];
    y[i] = sum * scale;
  }
}

__global__ void avg_pool_backward_kernel(Pool2dGeom g, int64_t total, float scale, const float* dy, float* dx) {
  POLYAK_GRID_LOOP(i, total) {
    const int64_t w = i % g.W, h = (i / g.W) % g.H, plane = i / (g.H * g.W);
    const float* dyp = dy + plane * g.P * g.Q;
    int64_t p_lo, p_hi, q_lo, q_hi;
    covering(h, g.kh, g.stride_h, g.pad_h, g.P, p_lo, p_hi);
    covering(w, g.kw, g.stride_w, g.pad_w, g.Q, q_lo, q_hi);
    float sum = 0.0f;
    for (int64_t p = p_lo; p < p_hi; ++p)
      for (int64_t q = q_lo; q < q_hi; ++q) sum += __fmul_rn(dyp[p * g.Q + q], scale);  // no FMA: as the CPU rounds
    dx[i] = sum;
  }
}

}  // namespace

void CudaBackend::max_pool2d_forward(const Pool2dGeom& g, const float* x, float* y, int32_t* argmax) {
  const int64_t total = g.N * g.C * g.P * g.Q;
  if (total <= 0) return;
  max_pool_forward_kernel<<<grid_for(total), kThreads, 0, stream_>>>(g, total, x, y, argmax);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::max_pool2d_backward(const Pool2dGeom& g, const float* dy, const int32_t* argmax, float* dx) {
  const int64_t total = g.N * g.C * g.H * g.W;
  if (total <= 0) return;
  max_pool_backward_kernel<<<grid_for(total), kThreads, 0, stream_>>>(g, total, dy, argmax, dx);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::avg_pool2d_forward(const Pool2dGeom& g, const float* x, float* y) {
  const int64_t total = g.N * g.C * g.P * g.Q;
  if (total <= 0) return;
  const float scale = 1.0f / static_cast<float>(g.kh * g.kw);
  avg_pool_forward_kernel<<<grid_for(total), kThreads, 0, stream_>>>(g, total, scale, x, y);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::avg_pool2d_backward(const Pool2dGeom& g, const float* dy, float* dx) {
  const int64_t total = g.N * g.C * g.H * g.W;
  if (total <= 0) return;
  const float scale = 1.0f / static_cast<float>(g.kh * g.kw);
  avg_pool_backward_kernel<<<grid_for(total), kThreads, 0, stream_>>>(g, total, scale, dy, dx);
  POLYAK_CUDA_LAUNCHED();
}

}  // namespace polyak
