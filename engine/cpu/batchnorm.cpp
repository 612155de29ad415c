// BatchNorm kernels on the CPU: per-channel statistics of an (N, C, HW) tensor.
//
// Element (n, c, s) sits at x[(n * C + c) * HW + s]; channel c owns the M = N * HW
// elements with that c. Every loop runs over channels in parallel (one thread owns a
// channel, so no reductions cross threads and results do not depend on the thread
// count); sums are accumulated in double.
//
// Forward, training (statistics of this batch):
//   mean = sum(x) / M,   var = sum((x - mean)^2) / M   (biased, two passes)
//   invstd = 1 / sqrt(var + eps),   xhat = (x - mean) * invstd
//   y = gamma * xhat + beta                            (gamma = 1, beta = 0 without affine)
//   running_mean = (1 - f) running_mean + f mean
//   running_var  = (1 - f) running_var  + f var * M / (M - 1)   (unbiased)
// Forward, evaluation: the same affine map with running_mean and running_var.
//
// Backward (training): y depends on every x of its channel through mean and var. With
// g = dy,
//   dbeta  = sum(g),   dgamma = sum(g * xhat)
//   dx     = gamma * invstd / M * (M g - sum(g) - xhat * sum(g * xhat))
// (the two subtracted terms are the gradient flowing through the mean and through the
// variance).
//
// The sums run over rows of HW floats: each row is summed in kLanes float lanes (a
// fixed order the compiler turns into vector adds; one double accumulator would make a
// serial chain of dependent adds, 4 cycles per element), and the rows in double.
#include <cmath>

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

namespace {

constexpr int kLanes = 16;

// The sum of f(i) over i < n, in kLanes float lanes then added up in double.
template <class F>
double lane_sum(int64_t n, F f) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += f(i + l);
  for (int l = 0; i < n; ++i, ++l) lanes[l] += f(i);
  double total = 0.0;
  for (float lane : lanes) total += lane;
  return total;
}

}  // namespace

void CpuBackend::batchnorm_forward_train(const BatchNormGeom& g, const float* x, const float* gamma,
                                         const float* beta, float eps, float factor, float* running_mean,
                                         float* running_var, float* y, float* save_mean, float* save_invstd) {
  const int64_t N = g.N, C = g.C, HW = g.HW, M = N * HW;
  parallel_for(C, 4 * M, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double sum = 0;
      for (int64_t n = 0; n < N; ++n) {
        const float* xc = x + (n * C + c) * HW;
        sum += lane_sum(HW, [xc](int64_t s) { return xc[s]; });
      }
      const double mean = M > 0 ? sum / static_cast<double>(M) : 0.0;
      // Deviations from the mean rounded to float: exact enough, as the mean removes
      // the magnitude that would cancel.
      const float fmean = static_cast<float>(mean);
      double sq = 0;
      for (int64_t n = 0; n < N; ++n) {
        const float* xc = x + (n * C + c) * HW;
        sq += lane_sum(HW, [xc, fmean](int64_t s) {
          const float d = xc[s] - fmean;
          return d * d;
        });
      }
      const double var = M > 0 ? sq / static_cast<double>(M) : 0.0;
      const double invstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
      save_mean[c] = static_cast<float>(mean);
      save_invstd[c] = static_cast<float>(invstd);

      // y = scale * x + shift, with scale = gamma * invstd and shift = beta - mean * scale.
      const double gm = gamma ? gamma[c] : 1.0;
      const double scale = gm * invstd;
      const double shift = (beta ? beta[c] : 0.0) - mean * scale;
      const float fs = static_cast<float>(scale), fb = static_cast<float>(shift);
      for (int64_t n = 0; n < N; ++n) {
        const float* xc = x + (n * C + c) * HW;
        float* yc = y + (n * C + c) * HW;
        for (int64_t s = 0; s < HW; ++s) yc[s] = fs * xc[s] + fb;
      }

      if (running_mean && running_var) {
        const double unbiased = M > 1 ? sq / static_cast<double>(M - 1) : var;
        const double f = factor;
        running_mean[c] = static_cast<float>((1.0 - f) * running_mean[c] + f * mean);
        running_var[c] = static_cast<float>((1.0 - f) * running_var[c] + f * unbiased);
      }
    }
  });
}

void CpuBackend::batchnorm_forward_eval(const BatchNormGeom& g, const float* x, const float* gamma,
                                        const float* beta, const float* running_mean, const float* running_var,
                                        float eps, float* y) {
  const int64_t N = g.N, C = g.C, HW = g.HW;
  parallel_for(C, N * HW, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps));
      const double scale = (gamma ? gamma[c] : 1.0) * invstd;
      const double shift = (beta ? beta[c] : 0.0) - running_mean[c] * scale;
      const float fs = static_cast<float>(scale), fb = static_cast<float>(shift);
      for (int64_t n = 0; n < N; ++n) {
        const float* xc = x + (n * C + c) * HW;
        float* yc = y + (n * C + c) * HW;
        for (int64_t s = 0; s < HW; ++s) yc[s] = fs * xc[s] + fb;
      }
    }
  });
}

void CpuBackend::batchnorm_backward(const BatchNormGeom& g, const float* x, const float* dy, const float* gamma,
                                    const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                                    float* dbeta) {
  const int64_t N = g.N, C = g.C, HW = g.HW, M = N * HW;
  parallel_for(C, 4 * M, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double mean = save_mean[c], invstd = save_invstd[c];
      // sum(g * xhat) = invstd * sum(g * (x - mean))
      const float fmean = static_cast<float>(mean);
      double sum_dy = 0, sum_dy_xc = 0;
      for (int64_t n = 0; n < N; ++n) {
        const float* xc = x + (n * C + c) * HW;
        const float* dyc = dy + (n * C + c) * HW;
        sum_dy += lane_sum(HW, [dyc](int64_t s) { return dyc[s]; });
        sum_dy_xc += lane_sum(HW, [xc, dyc, fmean](int64_t s) { return dyc[s] * (xc[s] - fmean); });
      }
      const double sum_dy_xhat = sum_dy_xc * invstd;
      if (dgamma) dgamma[c] = static_cast<float>(sum_dy_xhat);
      if (dbeta) dbeta[c] = static_cast<float>(sum_dy);

      // dx = k * (dy - a - xhat * b), k = gamma * invstd, a = mean(dy), b = mean(dy * xhat);
      // expanded to dx = k dy + u x + v so that the loop is one float multiply-add pair.
      const double inv_m = M > 0 ? 1.0 / static_cast<double>(M) : 0.0;
      const double k = (gamma ? gamma[c] : 1.0) * invstd;
      const double a = sum_dy * inv_m, b = sum_dy_xhat * inv_m;
      const float fk = static_cast<float>(k);
      const float fu = static_cast<float>(-k * b * invstd);
      const float fv = static_cast<float>(k * (b * invstd * mean - a));
      for (int64_t n = 0; n < N; ++n) {
        const float* xc = x + (n * C + c) * HW;
        const float* dyc = dy + (n * C + c) * HW;
        float* dxc = dx + (n * C + c) * HW;
        for (int64_t s = 0; s < HW; ++s) dxc[s] = fk * dyc[s] + fu * xc[s] + fv;
      }
    }
  });
}

}  // namespace polyak
