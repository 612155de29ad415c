// Kernel checks: pooling, softmax and loss, the SGD step, dropout.
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

// ---------------------------------------------------------------- pooling

static Pool2dGeom pool(int64_t N, int64_t C, int64_t H, int64_t W, int64_t k, int64_t stride, int64_t pad) {
  Pool2dGeom g{N, C, H, W, k, k, stride, stride, pad, pad, 0, 0};
  g.P = (H + 2 * pad - k) / stride + 1;
  g.Q = (W + 2 * pad - k) / stride + 1;
  return g;
}

void check_pool(const Kernels& k, Device d, Rng& rng) {
  for (const Pool2dGeom& g : {pool(2, 3, 8, 8, 2, 2, 0), pool(1, 2, 7, 9, 3, 1, 1), pool(3, 4, 9, 7, 3, 2, 1),
                              pool(2, 16, 8, 8, 8, 1, 0), pool(2, 3, 15, 31, 2, 2, 0), pool(1, 2, 6, 71, 2, 2, 0)}) {
    const int64_t nx = g.N * g.C * g.H * g.W, ny = g.N * g.C * g.P * g.Q;
    const Tensor x = random_host({nx}, rng), dy = random_host({ny}, rng);
    const Tensor x_d = copy_on(x, d), dy_d = copy_on(dy, d);
    Tensor y_got = empty_on({ny}, d), y_want = empty_on({ny}, Device::CPU);
    Tensor argmax_got = Tensor::empty({ny}, DType::I32, d), argmax_want = Tensor::empty({ny}, DType::I32);
    k.max_pool2d_forward(g, in(x_d), out(y_got), argmax_got.data<int32_t>());
    ref::max_pool2d_forward(g, in(x), out(y_want), argmax_want.data<int32_t>());
    check_close(back(y_got), y_want, 0, 0);
    CHECK(back(argmax_got).to_vector<int32_t>() == argmax_want.to_vector<int32_t>());
    Tensor dx_got = empty_on({nx}, d), dx_want = empty_on({nx}, Device::CPU);
    k.max_pool2d_backward(g, in(dy_d), copy_on(argmax_want, d).data<int32_t>(), out(dx_got));
    ref::max_pool2d_backward(g, in(dy), argmax_want.data<int32_t>(), out(dx_want));
    check_close(back(dx_got), dx_want, 1e-6, 1e-6);
    k.avg_pool2d_forward(g, in(x_d), out(y_got));
    ref::avg_pool2d_forward(g, in(x), out(y_want));
    check_close(back(y_got), y_want, 1e-6, 1e-5);
    k.avg_pool2d_backward(g, in(dy_d), out(dx_got));
    ref::avg_pool2d_backward(g, in(dy), out(dx_want));
    check_close(back(dx_got), dx_want, 1e-6, 1e-5);
  }
  // Ties and NaNs in 2x2 windows (the kernels' own path for them): the first of equal
  // values wins, the last NaN wins, as in the reference.
  const Pool2dGeom g = pool(1, 1, 4, 6, 2, 2, 0);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor x = Tensor::from_vector({1, 1, 0, nan, nan, 2, 1, 1, 0, 0, 3, nan,  //
                                        5, 4, 7, 7, -1, -2, 4, 5, 7, 7, -3, -1},
                                       {24});
  Tensor y_got = empty_on({6}, d), argmax_got = Tensor::empty({6}, DType::I32, d);
  Tensor y_want = empty_on({6}, Device::CPU), argmax_want = Tensor::empty({6}, DType::I32);
  k.max_pool2d_forward(g, in(copy_on(x, d)), out(y_got), argmax_got.data<int32_t>());
  ref::max_pool2d_forward(g, in(x), out(y_want), argmax_want.data<int32_t>());
  CHECK(back(argmax_got).to_vector<int32_t>() == argmax_want.to_vector<int32_t>());
  CHECK(argmax_want.to_vector<int32_t>() == std::vector<int32_t>{0, 3, 11, 12, 14, 16});
}

// ---------------------------------------------------------------- softmax, loss

void check_loss(const Kernels& k, Device d, Rng& rng) {
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{1, 10}, {37, 10}, {128, 100}, {5, 1}}) {
    const int64_t n = rows * cols;
    const Tensor x = random_host({n}, rng, -8.0f, 8.0f), dy = random_host({n}, rng);
    std::vector<int64_t> labels(static_cast<size_t>(rows));
    for (auto& l : labels) l = static_cast<int64_t>(rng.below(static_cast<uint64_t>(cols)));
    const Tensor labels_host = Tensor::from_data(labels.data(), {rows}), labels_d = copy_on(labels_host, d);
    Tensor y_got = empty_on({n}, d), y_want = empty_on({n}, Device::CPU);
    k.log_softmax_forward(rows, cols, in(copy_on(x, d)), out(y_got));
    ref::log_softmax_forward(rows, cols, in(x), out(y_want));
    check_close(back(y_got), y_want, 1e-5, 1e-5);
    Tensor dx_got = empty_on({n}, d), dx_want = empty_on({n}, Device::CPU);
    k.log_softmax_backward(rows, cols, in(copy_on(y_want, d)), in(copy_on(dy, d)), out(dx_got));
    ref::log_softmax_backward(rows, cols, in(y_want), in(dy), out(dx_want));
    check_close(back(dx_got), dx_want, 1e-5, 1e-5);
    for (float smoothing : {0.0f, 0.1f}) {
      Tensor lp_got = empty_on({n}, d), lp_want = empty_on({n}, Device::CPU);
      Tensor loss_got = empty_on({1}, d), loss_want = empty_on({1}, Device::CPU);
      k.cross_entropy_forward(rows, cols, in(copy_on(x, d)), labels_d.data<int64_t>(), smoothing, out(lp_got),
                                       out(loss_got));
      ref::cross_entropy_forward(rows, cols, in(x), labels.data(), smoothing, out(lp_want), out(loss_want));
      check_close(back(lp_got), lp_want, 1e-5, 1e-5);
      check_close(back(loss_got), loss_want, 1e-5, 1e-5);
      const Tensor dloss = Tensor::full({1}, 0.7f);
      Tensor dl_got = empty_on({n}, d), dl_want = empty_on({n}, Device::CPU);
      k.cross_entropy_backward(rows, cols, in(copy_on(lp_want, d)), labels_d.data<int64_t>(), smoothing,
                                        in(copy_on(dloss, d)), out(dl_got));
      ref::cross_entropy_backward(rows, cols, in(lp_want), labels.data(), smoothing, in(dloss), out(dl_want));
      check_close(back(dl_got), dl_want, 1e-6, 1e-5);
    }
  }
}

// ---------------------------------------------------------------- optimiser, dropout

void check_sgd_step(const Kernels& k, Device d, Rng& rng) {
  const int64_t n = 10007;
  for (const SgdHyper& h : {SgdHyper{0.1f, 0.9f, 0.0f, 5e-4f, true, false}, SgdHyper{0.1f, 0.9f, 0.0f, 5e-4f, true, true},
                            SgdHyper{0.05f, 0.5f, 0.3f, 1e-4f, false, false}, SgdHyper{0.2f, 0.0f, 0.0f, 0.0f, false, false}}) {
    const Tensor p0 = random_host({n}, rng), grad = random_host({n}, rng), m0 = random_host({n}, rng);
    Tensor p_got = copy_on(p0, d), m_got = copy_on(m0, d), p_want = p0.clone(), m_want = m0.clone();
    k.sgd_step(h, n, out(p_got), in(copy_on(grad, d)), out(m_got));
    ref::sgd_step(h, n, out(p_want), in(grad), out(m_want));
    check_close(back(p_got), p_want, 1e-6, 1e-6);
    if (h.momentum != 0.0f) check_close(back(m_got), m_want, 1e-6, 1e-6);
  }
}

void check_dropout(const Kernels& k, Device d, Rng& rng) {
  for (const auto& [n, p] : {std::pair<int64_t, float>{1, 0.5f}, {4099, 0.1f}, {10006, 0.5f}}) {
    const Tensor x = random_host({n}, rng), dy = random_host({n}, rng);
    Tensor y_got = empty_on({n}, d), y_want = empty_on({n}, Device::CPU);
    Tensor keep_got = Tensor::empty({n}, DType::U8, d), keep_want = Tensor::empty({n}, DType::U8);
    k.dropout_forward(n, in(copy_on(x, d)), p, 1234, 77, out(y_got), keep_got.data<uint8_t>());
    ref::dropout_forward(n, in(x), p, 1234, 77, out(y_want), keep_want.data<uint8_t>());
    CHECK(back(keep_got).to_vector<uint8_t>() == keep_want.to_vector<uint8_t>());
    check_close(back(y_got), y_want, 0, 1e-6);
    Tensor dx_got = empty_on({n}, d), dx_want = empty_on({n}, Device::CPU);
    k.dropout_backward(n, in(copy_on(dy, d)), copy_on(keep_want, d).data<uint8_t>(), p, out(dx_got));
    ref::dropout_backward(n, in(dy), keep_want.data<uint8_t>(), p, out(dx_want));
    check_close(back(dx_got), dx_want, 0, 1e-6);
  }
}

}  // namespace polyak::kernel_checks
