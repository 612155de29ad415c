// BatchNorm kernels on the CPU: per-channel statistics of an (N, C, HW) tensor.
//
// Element (n, c, s) sits at x[(n * C + c) * HW + s]; channel c owns the M = N * HW
// elements with that c, in N rows of HW. The channels are split over the threads (one
// thread owns a channel, so no reductions cross threads and results do not depend on
// the thread count); sums are accumulated in double. A thread walks its channels' rows
// image by image, (n, c0), (n, c0 + 1), ..., which reads one contiguous block of memory
// per image: channel by channel, each row would be a page of its own (HW = 1024 floats
// is 4 KB) and the hardware prefetchers, which stop at page boundaries, would start
// cold on every row.
//
// Forward, training (statistics of this batch):
//   mean = sum(x) / M,   var = sum((x - mean)^2) / M   (biased)
//   invstd = 1 / sqrt(var + eps),   xhat = (x - mean) * invstd
//   y = act(gamma * xhat + beta + residual)   (gamma = 1, beta = 0 without affine; the
//                                              residual and act = ReLU when fused)
//   running_mean = (1 - f) running_mean + f mean
//   running_var  = (1 - f) running_var  + f var * M / (M - 1)   (unbiased)
// Forward, evaluation: the same affine map with running_mean and running_var.
//
// The statistics take one pass over memory, summing d = x - K and d^2 with a shift K
// per channel, the mean of the channel's first row (image 0):
//   mean = K + sum(d) / M,   var = sum(d^2) / M - (sum(d) / M)^2.
// With K within a few standard deviations of the mean, as a row's mean is, the two
// terms of var do not cancel: a channel with mean 1e4 and unit variance keeps its
// variance to float precision, where sum(x^2) / M - mean^2 would lose all of it.
//
// Backward (training): y depends on every x of its channel through mean and var. With
// g = dy (masked by y > 0 after a fused ReLU; g is also the residual's gradient),
//   dbeta  = sum(g),   dgamma = sum(g * xhat)
//   dx     = gamma * invstd / M * (M g - sum(g) - xhat * sum(g * xhat))
// (the two subtracted terms are the gradient flowing through the mean and through the
// variance).
//
// The sums run over rows in LaneSum (engine/cpu/moments.h). With the convolution that
// computes its output's plane moments as it writes them (plane_moments), the statistics
// combine those instead of reading x (combine_plane_moments).
#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/cpu/epilogue.h"
#include "engine/cpu/moments.h"
#include "engine/cpu/scratch.h"
#include "engine/parallel.h"

namespace polyak {

namespace {

using cpu::LaneSum;

// A channel's sums of d = x - shift and d^2 (see the top of the file), the shift being
// the mean of the channel's first row.
struct Moments {
  float shift = 0.0f;
  LaneSum d, d2;

  explicit Moments(const float* first_row = nullptr, int64_t n = 0) {
    if (n <= 0) return;
    LaneSum row;
    row.add_row(n, [first_row](int64_t s) { return first_row[s]; });
    shift = static_cast<float>(row.sum() / static_cast<double>(n));
  }
  void add_row(const float* row, int64_t n) {
    const float k = shift;
    d.add_row(n, [row, k](int64_t s) { return row[s] - k; });
    d2.add_row(n, [row, k](int64_t s) {
      const float v = row[s] - k;
      return v * v;
    });
  }
  // The mean and the biased variance of the m values added.
  void result(int64_t m, double& mean, double& var) {
    const double dm = m > 0 ? d.sum() / static_cast<double>(m) : 0.0;
    mean = shift + dm;
    var = m > 0 ? std::max(d2.sum() / static_cast<double>(m) - dm * dm, 0.0) : 0.0;
  }
};

// A channel's affine map y = scale * x + shift.
struct Affine {
  float scale, shift;
};

// The training forward's map for channel c, from the saved (float) statistics: the
// backward derives the same coefficients to recompute a fused ReLU's mask from x.
Affine train_affine(int64_t c, const float* gamma, const float* beta, float mean, float invstd) {
  const double scale = (gamma ? gamma[c] : 1.0) * invstd;
  return {static_cast<float>(scale), static_cast<float>((beta ? beta[c] : 0.0) - static_cast<double>(mean) * scale)};
}

// The affine map with the epilogue over every row of channels [c0, c1), maps[c - c0].
void affine_channels(const BatchNormGeom& g, int64_t c0, int64_t c1, const float* x, const Affine* maps,
                     const Epilogue& epilogue, float* y) {
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t at = (n * g.C + c) * g.HW;
      const Affine map = maps[c - c0];
      cpu::affine_epilogue(g.HW, x + at, map.scale, map.shift, epilogue.residual ? epilogue.residual + at : nullptr,
                           epilogue.relu, y + at);
    }
}

}  // namespace

void cpu::batchnorm_forward_train_fused(const BatchNormGeom& g, const float* x, const float* plane_moments,
                                         const float* gamma, const float* beta, float eps, float factor,
                                         float* running_mean, float* running_var, const Epilogue& epilogue, float* y,
                                         float* save_mean, float* save_invstd) {
  const int64_t N = g.N, C = g.C, HW = g.HW, M = N * HW;
  parallel_for(C, 3 * M, [&](int64_t c0, int64_t c1) {
    thread_local std::vector<Moments> moments_buffer;
    thread_local std::vector<Affine> map_buffer;
    Moments* moments = plane_moments ? nullptr : cpu::scratch(moments_buffer, c1 - c0);
    Affine* maps = cpu::scratch(map_buffer, c1 - c0);
    if (!plane_moments) {
      for (int64_t c = c0; c < c1; ++c) moments[c - c0] = Moments(x + c * HW, N > 0 ? HW : 0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = c0; c < c1; ++c) moments[c - c0].add_row(x + (n * C + c) * HW, HW);
    }
    for (int64_t c = c0; c < c1; ++c) {
      double mean, var;
      if (plane_moments) {
        cpu::combine_plane_moments(plane_moments, N, C, c, HW, mean, var);
      } else {
        moments[c - c0].result(M, mean, var);
      }
      const double sq = var * static_cast<double>(M);
      const double invstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
      save_mean[c] = static_cast<float>(mean);
      save_invstd[c] = static_cast<float>(invstd);
      // y = act(scale * x + shift (+ r)), scale = gamma * invstd, shift = beta - mean * scale.
      maps[c - c0] = train_affine(c, gamma, beta, save_mean[c], save_invstd[c]);
      if (running_mean && running_var) {
        const double unbiased = M > 1 ? sq / static_cast<double>(M - 1) : var;
        const double f = factor;
        running_mean[c] = static_cast<float>((1.0 - f) * running_mean[c] + f * mean);
        running_var[c] = static_cast<float>((1.0 - f) * running_var[c] + f * unbiased);
      }
    }
    affine_channels(g, c0, c1, x, maps, epilogue, y);
  });
}

void cpu::batchnorm_forward_eval_fused(const BatchNormGeom& g, const float* x, const float* gamma,
                                        const float* beta, const float* running_mean, const float* running_var,
                                        float eps, const Epilogue& epilogue, float* y) {
  parallel_for(g.C, g.N * g.HW, [&](int64_t c0, int64_t c1) {
    thread_local std::vector<Affine> map_buffer;
    Affine* maps = cpu::scratch(map_buffer, c1 - c0);
    for (int64_t c = c0; c < c1; ++c) {
      const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps));
      const double scale = (gamma ? gamma[c] : 1.0) * invstd;
      maps[c - c0] = {static_cast<float>(scale), static_cast<float>((beta ? beta[c] : 0.0) - running_mean[c] * scale)};
    }
    affine_channels(g, c0, c1, x, maps, epilogue, y);
  });
}

void cpu::batchnorm_backward_fused(const BatchNormGeom& g, const float* x, const float* dy, const float* gamma,
                                    const float* beta, const float* save_mean, const float* save_invstd, bool relu,
                                    const float* relu_output, float* dx, float* dresidual, float* dgamma,
                                    float* dbeta) {
  const int64_t N = g.N, C = g.C, HW = g.HW, M = N * HW;
  // Per channel: the forward's map (for a recomputed ReLU mask), the sums of pass 1,
  // and the coefficients of pass 2, dx = k g + u x + v.
  struct Channel {
    Affine forward;
    float mean;
    LaneSum sum_g, sum_g_xc;  // of g and of g * (x - mean)
    float k = 0.0f, u = 0.0f, v = 0.0f;
  };
  parallel_for(C, 4 * M, [&](int64_t c0, int64_t c1) {
    thread_local std::vector<Channel> channel_buffer;
    Channel* channels = cpu::scratch(channel_buffer, c1 - c0);
    for (int64_t c = c0; c < c1; ++c)
      channels[c - c0] = {train_affine(c, gamma, beta, save_mean[c], save_invstd[c]), save_mean[c], {}, {}};

    // Calls body(g) with g(s) the gradient at element s of the row at `at` (channel ch):
    // dy, or dy masked by the ReLU's output (read, or recomputed from x). Each case is
    // its own loop, without a branch per element.
    const auto with_grad = [&](int64_t at, const Channel& ch, auto&& body) {
      const float *dyr = dy + at, *xr = x + at;
      if (!relu) {
        body([dyr](int64_t s) { return dyr[s]; });
      } else if (relu_output) {
        const float* yr = relu_output + at;
        body([dyr, yr](int64_t s) { return yr[s] > 0.0f ? dyr[s] : 0.0f; });
      } else {
        const Affine forward = ch.forward;
        body([dyr, xr, forward](int64_t s) { return forward.scale * xr[s] + forward.shift > 0.0f ? dyr[s] : 0.0f; });
      }
    };

    // Pass 1: sum(g) and sum(g * (x - mean)); sum(g * xhat) = invstd * the latter.
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = c0; c < c1; ++c) {
        Channel& ch = channels[c - c0];
        const int64_t at = (n * C + c) * HW;
        const float* xr = x + at;
        const float fmean = ch.mean;
        with_grad(at, ch, [&](auto grad) {
          ch.sum_g.add_row(HW, grad);
          ch.sum_g_xc.add_row(HW, [&grad, xr, fmean](int64_t s) { return grad(s) * (xr[s] - fmean); });
          if (dresidual) {
            float* dr = dresidual + at;
            for (int64_t s = 0; s < HW; ++s) dr[s] = grad(s);
          }
        });
      }

    // dx = k * (g - a - xhat * b), k = gamma * invstd, a = mean(g), b = mean(g * xhat);
    // expanded to dx = k g + u x + v so that the loop is one float multiply-add pair.
    for (int64_t c = c0; c < c1; ++c) {
      Channel& ch = channels[c - c0];
      const double mean = save_mean[c], invstd = save_invstd[c];
      const double sum_g = ch.sum_g.sum(), sum_g_xhat = ch.sum_g_xc.sum() * invstd;
      if (dgamma) dgamma[c] = static_cast<float>(sum_g_xhat);
      if (dbeta) dbeta[c] = static_cast<float>(sum_g);
      const double inv_m = M > 0 ? 1.0 / static_cast<double>(M) : 0.0;
      const double k = (gamma ? gamma[c] : 1.0) * invstd;
      const double a = sum_g * inv_m, b = sum_g_xhat * inv_m;
      ch.k = static_cast<float>(k);
      ch.u = static_cast<float>(-k * b * invstd);
      ch.v = static_cast<float>(k * (b * invstd * mean - a));
    }

    // Pass 2.
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = c0; c < c1; ++c) {
        const Channel& ch = channels[c - c0];
        const int64_t at = (n * C + c) * HW;
        const float* xr = x + at;
        float* dxr = dx + at;
        const float fk = ch.k, fu = ch.u, fv = ch.v;
        const auto apply = [&](auto grad) {
          for (int64_t s = 0; s < HW; ++s) dxr[s] = fk * grad(s) + fu * xr[s] + fv;
        };
        if (dresidual) {  // g is already written out there: one stream instead of two or three
          const float* dr = dresidual + at;
          apply([dr](int64_t s) { return dr[s]; });
        } else {
          with_grad(at, ch, apply);
        }
      }
  });
}

}  // namespace polyak
