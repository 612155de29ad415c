// 2-D convolution on the CPU: im2col + sgemm (engine/cpu/sgemm.h), one image per task.
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
// The images of the batch are spread over the thread team; each thread calls a
// single-threaded sgemm on its own images. The filter gradient sums over images, so
// each task accumulates into its own partial dW and the partials are then added.
// Scratch buffers (the column matrices, the partials) are thread_local vectors that
// grow to the largest layer and stay: a training step reuses the same pages instead
// of faulting in fresh memory every call.
#include <algorithm>
#include <cstring>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/sgemm.h"
#include "engine/parallel.h"

namespace polyak {

namespace {

bool is_pointwise(const Conv2dGeom& g) {
  return g.R == 1 && g.S == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0;
}

float* scratch(std::vector<float>& buffer, int64_t n) {
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(static_cast<size_t>(n));
  return buffer.data();
}

// The output columns q in [lo, hi) whose input column q*stride - pad + s lies inside [0, W).
void valid_range(int64_t Q, int64_t W, int64_t stride, int64_t pad, int64_t s, int64_t& lo, int64_t& hi) {
  const int64_t first = pad - s;  // need q*stride >= first
  lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  const int64_t last = W - 1 + pad - s;  // need q*stride <= last
  hi = last < 0 ? 0 : std::min(Q, last / stride + 1);
  lo = std::min(lo, hi);
}

// col (C*R*S, P*Q) from one image x (C, H, W).
void im2col(const Conv2dGeom& g, const float* x, float* col) {
  const int64_t PQ = g.P * g.Q;
  for (int64_t c = 0; c < g.C; ++c) {
    const float* xc = x + c * g.H * g.W;
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        float* row = col + ((c * g.R + r) * g.S + s) * PQ;
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

// dx (C, H, W) = col2im(dcol): the adjoint of im2col; writes dx in full.
void col2im(const Conv2dGeom& g, const float* col, float* dx) {
  const int64_t PQ = g.P * g.Q;
  std::memset(dx, 0, sizeof(float) * g.C * g.H * g.W);
  for (int64_t c = 0; c < g.C; ++c) {
    float* dxc = dx + c * g.H * g.W;
    for (int64_t r = 0; r < g.R; ++r) {
      for (int64_t s = 0; s < g.S; ++s) {
        const float* row = col + ((c * g.R + r) * g.S + s) * PQ;
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

int64_t gemm_cost(const Conv2dGeom& g) { return std::max<int64_t>(1, g.K * g.C * g.R * g.S * g.P * g.Q); }

}  // namespace

void CpuBackend::conv2d_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias, float* y) {
  const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q, HW = g.H * g.W;
  const bool pointwise = is_pointwise(g);
  parallel_for(g.N, gemm_cost(g), [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> col_buffer;
    float* col = pointwise ? nullptr : scratch(col_buffer, CRS * PQ);
    for (int64_t n = begin; n < end; ++n) {
      const float* xn = x + n * g.C * HW;
      float* yn = y + n * g.K * PQ;
      const float* cols = xn;  // a pointwise conv's image is its own column matrix
      if (!pointwise) {
        im2col(g, xn, col);
        cols = col;
      }
      float beta = 0.0f;
      if (bias) {
        for (int64_t k = 0; k < g.K; ++k) std::fill(yn + k * PQ, yn + (k + 1) * PQ, bias[k]);
        beta = 1.0f;
      }
      cpu::sgemm(false, false, g.K, PQ, CRS, 1.0f, w, CRS, cols, PQ, beta, yn, PQ);
    }
  });
}

void CpuBackend::conv2d_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx) {
  const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q, HW = g.H * g.W;
  const bool pointwise = is_pointwise(g);
  parallel_for(g.N, gemm_cost(g), [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> col_buffer;
    float* dcol = pointwise ? nullptr : scratch(col_buffer, CRS * PQ);
    for (int64_t n = begin; n < end; ++n) {
      const float* dyn = dy + n * g.K * PQ;
      float* dxn = dx + n * g.C * HW;
      // dcol = W^T * dy[n]; for a pointwise conv dcol is dx[n] itself.
      float* target = pointwise ? dxn : dcol;
      cpu::sgemm(true, false, CRS, PQ, g.K, 1.0f, w, CRS, dyn, PQ, 0.0f, target, PQ);
      if (!pointwise) col2im(g, dcol, dxn);
    }
  });
}

void CpuBackend::conv2d_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw,
                                        float* dbias) {
  const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q, HW = g.H * g.W, KCRS = g.K * CRS;
  const bool pointwise = is_pointwise(g);

  // One slot per thread (at most one per image); a slot's partial dW sums its images.
  // parallel_for hands each thread a contiguous run of slots; the run accumulates
  // into the partial of its first slot, and `used` marks the partials that hold data.
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(num_threads(), g.N));
  // The partials belong to the calling thread; the workers reach them through this
  // pointer (naming a thread_local inside the parallel body would give each worker its own).
  thread_local std::vector<std::vector<float>> partial_buffers;
  if (static_cast<int64_t>(partial_buffers.size()) < slots) partial_buffers.resize(static_cast<size_t>(slots));
  for (int64_t t = 0; t < slots; ++t) scratch(partial_buffers[t], KCRS);
  std::vector<float>* const partials = partial_buffers.data();
  std::vector<char> used(static_cast<size_t>(slots), 0);

  if (g.N > 0) {
    parallel_for(slots, gemm_cost(g) * g.N / slots, [&](int64_t slot_begin, int64_t slot_end) {
      thread_local std::vector<float> col_buffer;
      float* col = pointwise ? nullptr : scratch(col_buffer, CRS * PQ);
      float* acc = partials[slot_begin].data();
      const int64_t n_begin = g.N * slot_begin / slots, n_end = g.N * slot_end / slots;
      for (int64_t n = n_begin; n < n_end; ++n) {
        const float* xn = x + n * g.C * HW;
        const float* cols = xn;
        if (!pointwise) {
          im2col(g, xn, col);
          cols = col;
        }
        // acc (K x CRS) (+)= dy[n] (K x PQ) * col^T (PQ x CRS)
        cpu::sgemm(false, true, g.K, CRS, PQ, 1.0f, dy + n * g.K * PQ, PQ, cols, PQ, n == n_begin ? 0.0f : 1.0f, acc,
                   CRS);
      }
      used[slot_begin] = n_end > n_begin;
    });
  }

  std::vector<const float*> sources;
  for (int64_t t = 0; t < slots; ++t)
    if (used[t]) sources.push_back(partials[t].data());
  parallel_for(KCRS, static_cast<int64_t>(sources.size()) + 1, [&](int64_t begin, int64_t end) {
    if (sources.empty()) {
      std::fill(dw + begin, dw + end, 0.0f);
      return;
    }
    std::copy(sources[0] + begin, sources[0] + end, dw + begin);
    for (size_t t = 1; t < sources.size(); ++t) {
      const float* src = sources[t];
      for (int64_t i = begin; i < end; ++i) dw[i] += src[i];
    }
  });

  if (dbias) {
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
}

}  // namespace polyak
