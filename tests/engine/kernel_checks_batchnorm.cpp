// Kernel checks: BatchNorm, plain and fused.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/ref/kernels.h"
#include "engine/rng.h"
#include "support/gradcheck.h"
#include "engine/kernel_checks.h"

using namespace polyak;
using polyak::testing::check_close;

namespace polyak::kernel_checks {

// ---------------------------------------------------------------- batchnorm

// Channels of 25 pixels, BatchNorm1d-style rows (HW = 1), one image, many channels, and
// a mean far from zero with a short row (the statistics must not cancel).
std::vector<BatchNormGeom> batchnorm_cases() { return {{8, 3, 25}, {64, 10, 1}, {1, 4, 49}, {2, 64, 64}, {16, 5, 3}}; }

void check_batchnorm(const Kernels& k, Device d, Rng& rng) {
  const float eps = 1e-5f, factor = 0.1f;
  if (!k.batchnorm_forward_train) return;  // a table that has only the fused forms (check_batchnorm_fused)
  for (const BatchNormGeom& g : batchnorm_cases()) {
    CAPTURE(g.N);
    CAPTURE(g.C);
    CAPTURE(g.HW);
    const int64_t n = g.N * g.C * g.HW;
    const Tensor x = random_host({n}, rng, 3.0f, 5.0f), dy = random_host({n}, rng);
    const Tensor gamma = random_host({g.C}, rng, 0.5f, 1.5f), beta = random_host({g.C}, rng);
    const Tensor rm0 = random_host({g.C}, rng), rv0 = random_host({g.C}, rng, 0.5f, 2.0f);
    const Tensor x_d = copy_on(x, d);
    for (bool affine : {false, true}) {
      const Tensor gamma_d = copy_on(gamma, d), beta_d = copy_on(beta, d);
      const float* gg = affine ? in(gamma_d) : nullptr;
      const float* bg = affine ? in(beta_d) : nullptr;
      Tensor y_got = empty_on({n}, d), mean_got = empty_on({g.C}, d), invstd_got = empty_on({g.C}, d);
      Tensor rm_got = copy_on(rm0, d), rv_got = copy_on(rv0, d);
      k.batchnorm_forward_train(g, in(x_d), gg, bg, eps, factor, out(rm_got), out(rv_got), out(y_got), out(mean_got),
                                out(invstd_got));
      Tensor y_want = empty_on({n}, Device::CPU), mean_want = empty_on({g.C}, Device::CPU);
      Tensor invstd_want = empty_on({g.C}, Device::CPU), rm_want = rm0.clone(), rv_want = rv0.clone();
      ref::batchnorm_forward_train(g, in(x), affine ? in(gamma) : nullptr, affine ? in(beta) : nullptr, eps, factor,
                                   out(rm_want), out(rv_want), out(y_want), out(mean_want), out(invstd_want));
      check_close(back(y_got), y_want, 1e-4, 1e-4);
      check_close(back(mean_got), mean_want, 1e-5, 1e-6);
      check_close(back(invstd_got), invstd_want, 1e-5, 1e-4);
      check_close(back(rm_got), rm_want, 1e-5, 1e-5);
      check_close(back(rv_got), rv_want, 1e-5, 1e-4);

      Tensor eval_got = empty_on({n}, d), eval_want = empty_on({n}, Device::CPU);
      k.batchnorm_forward_eval(g, in(x_d), gg, bg, in(copy_on(rm0, d)), in(copy_on(rv0, d)), eps, out(eval_got));
      ref::batchnorm_forward_eval(g, in(x), affine ? in(gamma) : nullptr, affine ? in(beta) : nullptr, in(rm0), in(rv0),
                                  eps, out(eval_want));
      check_close(back(eval_got), eval_want, 1e-5, 1e-5);

      Tensor dx_got = empty_on({n}, d), dgamma_got = empty_on({g.C}, d), dbeta_got = empty_on({g.C}, d);
      k.batchnorm_backward(g, in(x_d), in(copy_on(dy, d)), gg, in(copy_on(mean_want, d)), in(copy_on(invstd_want, d)),
                           out(dx_got), out(dgamma_got), out(dbeta_got));
      Tensor dx_want = empty_on({n}, Device::CPU), dgamma_want = empty_on({g.C}, Device::CPU);
      Tensor dbeta_want = empty_on({g.C}, Device::CPU);
      ref::batchnorm_backward(g, in(x), in(dy), affine ? in(gamma) : nullptr, in(mean_want), in(invstd_want),
                              out(dx_want), out(dgamma_want), out(dbeta_want));
      check_close(back(dx_got), dx_want, 1e-4, 1e-3);
      check_close(back(dgamma_got), dgamma_want, 1e-3, 1e-4);
      check_close(back(dbeta_got), dbeta_want, 1e-3, 1e-4);
    }
  }
}

// The fused forms: statistics from a convolution's plane moments, the epilogue
// relu(bn(x) + residual) in training and evaluation, and the backward through the ReLU
// that also hands out the residual's gradient.
void check_batchnorm_fused(const Kernels& k, Device d, Rng& rng) {
  const float eps = 1e-5f, factor = 0.1f;
  if (!k.batchnorm_forward_train_fused) return;  // a table without the fusions: the op composes plain kernels
  for (const BatchNormGeom& g : batchnorm_cases()) {
    const int64_t n = g.N * g.C * g.HW;
    const Tensor x = random_host({n}, rng, -1.0f, 2.0f), dy = random_host({n}, rng), residual = random_host({n}, rng);
    const Tensor gamma = random_host({g.C}, rng, 0.5f, 1.5f), beta = random_host({g.C}, rng);
    const Tensor x_d = copy_on(x, d), gamma_d = copy_on(gamma, d), beta_d = copy_on(beta, d), residual_d = copy_on(residual, d);
    Tensor y_plain = empty_on({n}, Device::CPU), mean = empty_on({g.C}, Device::CPU), invstd = empty_on({g.C}, Device::CPU);
    ref::batchnorm_forward_train(g, in(x), in(gamma), in(beta), eps, factor, nullptr, nullptr, out(y_plain), out(mean),
                                 out(invstd));
    // Plane moments as a convolution writes them (mean as value + rounding error, then
    // the sum of squared deviations), computed here in double from x.
    std::vector<float> moments(static_cast<size_t>(g.N * g.C * kPlaneMoments));
    const std::vector<float> xv = x.to_vector<float>();
    for (int64_t p = 0; p < g.N * g.C; ++p) {
      double m = 0, squares = 0;
      for (int64_t j = 0; j < g.HW; ++j) m += xv[static_cast<size_t>(p * g.HW + j)];
      m /= static_cast<double>(g.HW);
      for (int64_t j = 0; j < g.HW; ++j) squares += std::pow(xv[static_cast<size_t>(p * g.HW + j)] - m, 2);
      moments[static_cast<size_t>(3 * p)] = static_cast<float>(m);
      moments[static_cast<size_t>(3 * p + 1)] = static_cast<float>(m - static_cast<float>(m));
      moments[static_cast<size_t>(3 * p + 2)] = static_cast<float>(squares);
    }
    const Tensor moments_d = Tensor::from_vector(moments, {g.N * g.C * kPlaneMoments}, d);
    for (bool use_moments : {false, true})
      for (bool relu : {false, true}) {
        Tensor y = empty_on({n}, d), m = empty_on({g.C}, d), s = empty_on({g.C}, d);
        k.batchnorm_forward_train_fused(g, in(x_d), use_moments ? in(moments_d) : nullptr, in(gamma_d), in(beta_d),
                                           eps, factor, nullptr, nullptr, Epilogue{in(residual_d), relu}, out(y), out(m),
                                           out(s));
        Tensor want = y_plain.clone();
        apply_epilogue(want, residual, relu);
        check_close(back(y), want, 1e-4, 1e-4);
      }
    // Backward through relu(bn(x) + residual): g = dy where the output is positive;
    // the residual's gradient is g, and the BatchNorm's backward runs on g.
    Tensor y_want = y_plain.clone();
    apply_epilogue(y_want, residual, true);
    Tensor g_want = empty_on({n}, Device::CPU), dx_want = empty_on({n}, Device::CPU);
    Tensor dgamma_want = empty_on({g.C}, Device::CPU), dbeta_want = empty_on({g.C}, Device::CPU);
    ref::relu_backward(n, in(y_want), in(dy), out(g_want));
    ref::batchnorm_backward(g, in(x), in(g_want), in(gamma), in(mean), in(invstd), out(dx_want), out(dgamma_want),
                            out(dbeta_want));
    Tensor dx = empty_on({n}, d), dresidual = empty_on({n}, d), dgamma = empty_on({g.C}, d), dbeta = empty_on({g.C}, d);
    k.batchnorm_backward_fused(g, in(x_d), in(copy_on(dy, d)), in(gamma_d), in(beta_d), in(copy_on(mean, d)), in(copy_on(invstd, d)),
                                  true, in(copy_on(y_want, d)), out(dx), out(dresidual), out(dgamma), out(dbeta));
    check_close(back(dresidual), g_want, 0, 0);
    check_close(back(dx), dx_want, 1e-4, 1e-3);
    check_close(back(dgamma), dgamma_want, 1e-3, 1e-4);
    check_close(back(dbeta), dbeta_want, 1e-3, 1e-4);
  }
}

}  // namespace polyak::kernel_checks
