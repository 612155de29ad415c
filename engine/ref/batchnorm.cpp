// Reference BatchNorm over an (N, C, HW) tensor: channel c owns the M = N * HW elements
// x[(n * C + c) * HW + s]. Sums in double, two passes (the mean, then the squared
// deviations from it).
//
// Training:   mean = sum(x) / M,   var = sum((x - mean)^2) / M   (biased)
//             invstd = 1 / sqrt(var + eps),   xhat = (x - mean) * invstd
//             y = gamma * xhat + beta          (gamma = 1, beta = 0 without affine)
//             running_mean = (1 - f) running_mean + f mean
//             running_var  = (1 - f) running_var  + f var * M / (M - 1)   (unbiased)
// Evaluation: the same map with running_mean and running_var in place of the batch's.
// Backward (training): y depends on every x of its channel through mean and var;
//             dbeta = sum(dy),   dgamma = sum(dy * xhat)
//             dx = gamma * invstd / M * (M dy - sum(dy) - xhat * sum(dy * xhat))
#include <cmath>

#include "engine/ref/kernels.h"

namespace polyak::ref {

namespace {

// Element i of channel c (i < M), at its place in the (N, C, HW) layout.
int64_t at(const BatchNormGeom& g, int64_t c, int64_t i) { return ((i / g.HW) * g.C + c) * g.HW + i % g.HW; }

}  // namespace

void batchnorm_forward_train(const BatchNormGeom& g, const float* x, const float* gamma, const float* beta, float eps,
                             float factor, float* running_mean, float* running_var, float* y, float* save_mean,
                             float* save_invstd) {
  const int64_t M = g.N * g.HW;
  for (int64_t c = 0; c < g.C; ++c) {
    double sum = 0, squares = 0;
    for (int64_t i = 0; i < M; ++i) sum += x[at(g, c, i)];
    const double mean = M > 0 ? sum / static_cast<double>(M) : 0.0;
    for (int64_t i = 0; i < M; ++i) squares += (x[at(g, c, i)] - mean) * (x[at(g, c, i)] - mean);
    const double var = M > 0 ? squares / static_cast<double>(M) : 0.0;
    const double invstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
    const double scale = gamma ? gamma[c] : 1.0, shift = beta ? beta[c] : 0.0;
    for (int64_t i = 0; i < M; ++i) y[at(g, c, i)] = static_cast<float>(scale * (x[at(g, c, i)] - mean) * invstd + shift);
    save_mean[c] = static_cast<float>(mean);
    save_invstd[c] = static_cast<float>(invstd);
    if (running_mean && running_var) {
      const double unbiased = M > 1 ? squares / static_cast<double>(M - 1) : var;
      running_mean[c] = static_cast<float>((1.0 - factor) * running_mean[c] + factor * mean);
      running_var[c] = static_cast<float>((1.0 - factor) * running_var[c] + factor * unbiased);
    }
  }
}

void batchnorm_forward_eval(const BatchNormGeom& g, const float* x, const float* gamma, const float* beta,
                            const float* running_mean, const float* running_var, float eps, float* y) {
  const int64_t M = g.N * g.HW;
  for (int64_t c = 0; c < g.C; ++c) {
    const double invstd = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps));
    const double scale = gamma ? gamma[c] : 1.0, shift = beta ? beta[c] : 0.0;
    for (int64_t i = 0; i < M; ++i)
      y[at(g, c, i)] = static_cast<float>(scale * (x[at(g, c, i)] - running_mean[c]) * invstd + shift);
  }
}

void batchnorm_backward(const BatchNormGeom& g, const float* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma, float* dbeta) {
  const int64_t M = g.N * g.HW;
  for (int64_t c = 0; c < g.C; ++c) {
    const double mean = save_mean[c], invstd = save_invstd[c];
    double sum_dy = 0, sum_dy_xhat = 0;
    for (int64_t i = 0; i < M; ++i) {
      sum_dy += dy[at(g, c, i)];
      sum_dy_xhat += dy[at(g, c, i)] * (x[at(g, c, i)] - mean) * invstd;
    }
    const double k = (gamma ? gamma[c] : 1.0) * invstd / static_cast<double>(M);
    for (int64_t i = 0; i < M; ++i) {
      const double xhat = (x[at(g, c, i)] - mean) * invstd;
      dx[at(g, c, i)] = static_cast<float>(k * (static_cast<double>(M) * dy[at(g, c, i)] - sum_dy - xhat * sum_dy_xhat));
    }
    if (dgamma) dgamma[c] = static_cast<float>(sum_dy_xhat);
    if (dbeta) dbeta[c] = static_cast<float>(sum_dy);
  }
}

}  // namespace polyak::ref
