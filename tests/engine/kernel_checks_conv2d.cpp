// Kernel checks: convolution, plain and fused.
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

// ---------------------------------------------------------------- conv2d

static Conv2dGeom conv(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t stride, int64_t pad) {
  Conv2dGeom g{N, C, H, W, K, R, R, stride, stride, pad, pad, 0, 0};
  g.P = (H + 2 * pad - R) / stride + 1;
  g.Q = (W + 2 * pad - R) / stride + 1;
  return g;
}

// 1x1, 3x3 same, stride 2 (odd and even sizes), batch 1, 3 input channels, many channels
// on a small map, a 5x5 filter, and the shapes of ResNet-20's layers that choose the
// fast CPU table's other algorithms (Winograd, images in vector lanes).
static std::vector<Conv2dGeom> conv_cases() {
  return {conv(2, 3, 5, 5, 4, 1, 1, 0),    conv(2, 5, 7, 6, 3, 3, 1, 1),    conv(1, 4, 9, 9, 6, 3, 2, 1),
          conv(3, 8, 8, 8, 16, 3, 2, 1),   conv(2, 3, 11, 7, 5, 5, 1, 2),  conv(2, 128, 4, 4, 64, 3, 1, 1),
          conv(4, 16, 16, 16, 16, 3, 1, 1), conv(16, 64, 8, 8, 64, 3, 1, 1), conv(2, 16, 16, 16, 32, 1, 2, 0)};
}

// Float rounding grows with the square root of the terms summed. The constant allows
// for Winograd's F(4x4, 3x3) (the CPU's WinogradLanes; cuDNN's Winograd kernels too),
// whose transforms scale by up to 8 and 1/24 and round about 6 times more than a
// direct sum (tools/winograd_error.py).
double conv_tolerance(const Conv2dGeom& g) { return 1e-5 * std::sqrt(static_cast<double>(g.C * g.R * g.S)) + 1e-5; }

void check_conv2d(const Kernels& k, Device d, Rng& rng) {
  for (const Conv2dGeom& g : conv_cases()) {
    CAPTURE(g.C);
    CAPTURE(g.H);
    CAPTURE(g.K);
    CAPTURE(g.stride_h);
    const Tensor x = random_host({g.N * g.C * g.H * g.W}, rng), w = random_host({g.K * g.C * g.R * g.S}, rng);
    const Tensor bias = random_host({g.K}, rng), dy = random_host({g.N * g.K * g.P * g.Q}, rng);
    const Tensor x_d = copy_on(x, d), w_d = copy_on(w, d), dy_d = copy_on(dy, d);
    const double tol = conv_tolerance(g);
    for (bool with_bias : {false, true}) {
      Tensor got = empty_on({g.N * g.K * g.P * g.Q}, d), want = empty_on({g.N * g.K * g.P * g.Q}, Device::CPU);
      if (!k.conv2d_forward) break;  // a table that has only the fused form (checked in check_conv2d_fused)
      k.conv2d_forward(g, in(x_d), in(w_d), with_bias ? in(copy_on(bias, d)) : nullptr, out(got));
      ref::conv2d_forward(g, in(x), in(w), with_bias ? in(bias) : nullptr, out(want));
      check_close(back(got), want, tol, tol);
    }
    Tensor dx_got = empty_on({g.N * g.C * g.H * g.W}, d), dx_want = empty_on({g.N * g.C * g.H * g.W}, Device::CPU);
    k.conv2d_backward_data(g, in(dy_d), in(w_d), out(dx_got));
    ref::conv2d_backward_data(g, in(dy), in(w), out(dx_want));
    check_close(back(dx_got), dx_want, tol, tol);
    Tensor dw_got = empty_on({g.K * g.C * g.R * g.S}, d), dw_want = empty_on({g.K * g.C * g.R * g.S}, Device::CPU);
    Tensor db_got = empty_on({g.K}, d), db_want = empty_on({g.K}, Device::CPU);
    k.conv2d_backward_filter(g, in(x_d), in(dy_d), out(dw_got), out(db_got));
    ref::conv2d_backward_filter(g, in(x), in(dy), out(dw_want), out(db_want));
    const double sum_tol = tol * std::sqrt(static_cast<double>(g.N * g.P * g.Q));
    check_close(back(dw_got), dw_want, sum_tol, tol);
    check_close(back(db_got), db_want, sum_tol, tol);
  }
}

// y + residual, then ReLU, on the host: the reference of a fused epilogue.
void apply_epilogue(Tensor& y, const Tensor& residual, bool relu) {
  const int64_t n = y.numel();
  if (residual.defined()) {
    BroadcastGeom same;
    same.ndim = 1;
    same.shape[0] = n;
    same.a_strides[0] = same.b_strides[0] = 1;
    ref::binary(BinaryOp::Add, same, in(y), in(residual), out(y));
  }
  if (relu) ref::relu_forward(n, in(y), out(y));
}

void check_conv2d_fused(const Kernels& k, Device d, Rng& rng) {
  int moments_runs = 0, in_place_runs = 0, add_runs = 0;  // the optional kernels the table took
  for (const Conv2dGeom& g : conv_cases()) {
    const int64_t ny = g.N * g.K * g.P * g.Q, nx = g.N * g.C * g.H * g.W;
    const Tensor x = random_host({nx}, rng), w = random_host({g.K * g.C * g.R * g.S}, rng);
    const Tensor residual = random_host({ny}, rng), dy = random_host({ny}, rng);
    const Tensor x_d = copy_on(x, d), w_d = copy_on(w, d), dy_d = copy_on(dy, d);
    const double tol = conv_tolerance(g);
    Tensor plain = empty_on({ny}, Device::CPU);
    ref::conv2d_forward(g, in(x), in(w), nullptr, out(plain));
    // The epilogue y = relu(conv + residual), with and without each part.
    for (bool with_residual : {false, true})
      for (bool relu : {false, true}) {
        const Tensor residual_d = copy_on(residual, d);
        Tensor got = empty_on({ny}, d), want = plain.clone();
        if (!k.conv2d_forward_epilogue) break;
        k.conv2d_forward_epilogue(g, in(x_d), in(w_d), nullptr, Epilogue{with_residual ? in(residual_d) : nullptr, relu},
                                  out(got));
        apply_epilogue(want, with_residual ? residual : Tensor(), relu);
        check_close(back(got), want, tol, tol);
      }
    // The output's plane moments, where the table computes them: each plane's mean (a
    // float and its rounding error) and its sum of squared deviations.
    Tensor y_got = empty_on({ny}, d), moments = empty_on({g.N * g.K * kPlaneMoments}, d);
    if (k.conv2d_forward_moments && k.conv2d_forward_moments(g, in(x_d), in(w_d), nullptr, out(y_got), out(moments))) {
      ++moments_runs;
      check_close(back(y_got), plain, tol, tol);
      const std::vector<float> m = back(moments).to_vector<float>(), y = plain.to_vector<float>();
      const int64_t plane = g.P * g.Q;
      for (int64_t i = 0; i < g.N * g.K; ++i) {
        double mean = 0, squares = 0;
        for (int64_t j = 0; j < plane; ++j) mean += y[static_cast<size_t>(i * plane + j)];
        mean /= static_cast<double>(plane);
        for (int64_t j = 0; j < plane; ++j) squares += std::pow(y[static_cast<size_t>(i * plane + j)] - mean, 2);
        const double got_mean = static_cast<double>(m[static_cast<size_t>(3 * i)]) + m[static_cast<size_t>(3 * i + 1)];
        REQUIRE(std::abs(got_mean - mean) <= tol);
        REQUIRE(std::abs(m[static_cast<size_t>(3 * i + 2)] - squares) <= tol * (1 + squares));
      }
    }
    // The data gradient written over dy, and added into dx, where the table can.
    Tensor dx_want = empty_on({nx}, Device::CPU);
    ref::conv2d_backward_data(g, in(dy), in(w), out(dx_want));
    if (g.stride_h == 1 && g.K == g.C && g.P == g.H && g.Q == g.W) {
      Tensor in_place = copy_on(dy, d);
      if (k.conv2d_backward_data_in_place && k.conv2d_backward_data_in_place(g, out(in_place), in(w_d))) {
        ++in_place_runs;
        check_close(back(in_place), dx_want, tol, tol);
      }
    }
    const Tensor dx0 = random_host({nx}, rng);
    Tensor sum = copy_on(dx0, d);
    if (k.conv2d_backward_data_add && k.conv2d_backward_data_add(g, in(dy_d), in(w_d), out(sum))) {
      ++add_runs;
      Tensor want = dx0.clone();
      apply_epilogue(want, dx_want, false);
      check_close(back(sum), want, tol, tol);
    }
  }
  // The CPU table offers all three for some of these shapes: a test that never ran them
  // would pass without checking them.
  if (d == Device::CPU && k.conv2d_forward_moments) {
    CHECK(moments_runs > 0);
    CHECK(in_place_runs > 0);
    CHECK(add_runs > 0);
  }
}

}  // namespace polyak::kernel_checks
