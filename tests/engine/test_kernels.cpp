// The table-driven kernel test: every kernel of the CPU table, and of the GPU table
// where there is one, against its reference (engine/ref), on random data over shapes
// that include the edge cases (one element, odd sizes, stride 2, batch 1, many
// channels, ragged ends). A fused kernel is checked against the composition of the
// references it fuses. Adding a kernel adds one check function and one entry to
// kKernelChecks.
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

using namespace polyak;
using polyak::testing::check_close;

namespace {

// Random host data (the reference's input) and its copy on the device under test.
Tensor random_host(const Shape& shape, Rng& rng, float low = -1.0f, float high = 1.0f) {
  return Tensor::uniform(shape, low, high, rng);
}
const float* in(const Tensor& t) { return t.data<float>(); }
float* out(Tensor& t) { return t.data<float>(); }
Tensor empty_on(const Shape& shape, Device device) { return Tensor::empty(shape, DType::F32, device); }
Tensor back(const Tensor& t) { return t.to(Device::CPU); }
// A copy of host data on the device under test that its kernel may write (to(CPU) of a
// CPU tensor is the tensor itself, not a copy).
Tensor copy_on(const Tensor& host, Device d) { return d == Device::CPU ? host.clone() : host.to(d); }

// ---------------------------------------------------------------- elementwise

void check_fill(const Kernels& k, Device d, Rng&) {
  for (int64_t n : {1, 17, 100003}) {
    Tensor got = empty_on({n}, d), want = empty_on({n}, Device::CPU);
    k.fill(out(got), n, 2.5f);
    ref::fill(out(want), n, 2.5f);
    check_close(back(got), want, 0, 0);
  }
}

void check_copy_strided(const Kernels& k, Device d, Rng& rng) {
  // A transposition (4, 5, 6) -> (6, 5, 4), and a broadcast of a row over 7 rows, for
  // every element size: the float buffer is read as 1-, 4- or 8-byte elements.
  const Tensor src = random_host({2 * 4 * 5 * 6}, rng);
  const Tensor src_d = copy_on(src, d);
  for (size_t elem : {size_t{1}, size_t{4}, size_t{8}}) {
    const Layout transposed_dst = contiguous_layout({6, 5, 4});
    const Layout transposed_src = make_layout({6, 5, 4}, {1, 6, 30});
    const Layout broadcast_dst = contiguous_layout({7, 30});
    const Layout broadcast_src = make_layout({7, 30}, {0, 1});
    for (const auto& [dst_layout, src_layout] :
         {std::pair{transposed_dst, transposed_src}, std::pair{broadcast_dst, broadcast_src}}) {
      Tensor got = Tensor::zeros({2 * 7 * 30}, DType::F32, d), want = Tensor::zeros({2 * 7 * 30});
      k.copy_strided(out(got), dst_layout, in(src_d), src_layout, elem);
      ref::copy_strided(out(want), dst_layout, in(src), src_layout, elem);
      const std::vector<float> g = back(got).to_vector<float>(), w = want.to_vector<float>();
      CHECK(std::memcmp(g.data(), w.data(), g.size() * sizeof(float)) == 0);
    }
  }
}

// (8, 3, 5, 7) against operands of the same shape, of (1, 3, 1, 1) (per channel), of
// (8, 1, 1, 7) and of one element; and a transposed left operand.
std::vector<BroadcastGeom> broadcast_cases() {
  const Shape shape = {8, 3, 5, 7};
  const Shape full = contiguous_strides(shape);
  std::vector<std::pair<Shape, Shape>> strides = {
      {full, full}, {full, {0, 1, 0, 0}}, {{0, 0, 0, 0}, full}, {full, {7, 0, 0, 1}}, {{1, 8, 24, 120}, full}};
  std::vector<BroadcastGeom> cases;
  for (const auto& [a, b] : strides) {
    BroadcastGeom g;
    g.ndim = 4;
    for (int i = 0; i < 4; ++i) {
      g.shape[i] = shape[static_cast<size_t>(i)];
      g.a_strides[i] = a[static_cast<size_t>(i)];
      g.b_strides[i] = b[static_cast<size_t>(i)];
    }
    cases.push_back(g);
  }
  return cases;
}

void check_binary(const Kernels& k, Device d, Rng& rng) {
  const Tensor a = random_host({8 * 3 * 5 * 7}, rng), b = random_host({8 * 3 * 5 * 7}, rng, 0.5f, 2.0f);
  const Tensor a_d = copy_on(a, d), b_d = copy_on(b, d);
  for (const BroadcastGeom& g : broadcast_cases())
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div}) {
      Tensor got = empty_on({8 * 3 * 5 * 7}, d), want = empty_on({8 * 3 * 5 * 7}, Device::CPU);
      k.binary(op, g, in(a_d), in(b_d), out(got));
      ref::binary(op, g, in(a), in(b), out(want));
      check_close(back(got), want, 0, 1e-6);
    }
}

void check_scalar_and_unary(const Kernels& k, Device d, Rng& rng) {
  const int64_t n = 1003;
  const Tensor x = random_host({n}, rng, 0.1f, 3.0f), x_d = copy_on(x, d);  // positive: log, sqrt, pow, division
  for (ScalarOp op : {ScalarOp::Add, ScalarOp::Mul, ScalarOp::RSub, ScalarOp::RDiv, ScalarOp::Pow}) {
    Tensor got = empty_on({n}, d), want = empty_on({n}, Device::CPU);
    k.scalar(op, n, in(x_d), 1.7f, out(got));
    ref::scalar(op, n, in(x), 1.7f, out(want));
    check_close(back(got), want, 0, 1e-5);
  }
  for (UnaryOp op : {UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Log, UnaryOp::Sqrt}) {
    Tensor got = empty_on({n}, d), want = empty_on({n}, Device::CPU);
    k.unary(op, n, in(x_d), out(got));
    ref::unary(op, n, in(x), out(want));
    check_close(back(got), want, 0, 1e-5);
  }
}

void check_axpy_and_multi_lerp(const Kernels& k, Device d, Rng& rng) {
  const int64_t n = 10007;
  const Tensor x = random_host({n}, rng), y0 = random_host({n}, rng);
  Tensor got = copy_on(y0, d), want = y0.clone();
  k.axpy(n, -0.3f, in(copy_on(x, d)), out(got));
  ref::axpy(n, -0.3f, in(x), out(want));
  check_close(back(got), want, 1e-7, 1e-6);

  const std::vector<float> kept = {0.0f, 0.5f, 0.999f, 1.0f};
  std::vector<Tensor> targets_got, targets_want;
  MultiLerp mg, mw;
  mg.count = mw.count = static_cast<int>(kept.size());
  for (size_t k = 0; k < kept.size(); ++k) {
    const Tensor t = random_host({n}, rng);
    targets_got.push_back(copy_on(t, d));
    targets_want.push_back(t.clone());
    mg.kept[k] = mw.kept[k] = kept[k];
    mg.target[k] = out(targets_got[k]);
    mw.target[k] = out(targets_want[k]);
  }
  k.multi_lerp(mg, n, in(copy_on(x, d)));
  ref::multi_lerp(mw, n, in(x));
  for (size_t k = 0; k < kept.size(); ++k) check_close(back(targets_got[k]), targets_want[k], 1e-7, 1e-6);
}

void check_increment_counter(const Kernels& k, Device d, Rng&) {
  Tensor counter = Tensor::zeros({1}, DType::I64, d);
  k.increment_counter(counter.data<int64_t>());
  k.increment_counter(counter.data<int64_t>());
  int64_t want = 0;
  ref::increment_counter(&want);
  ref::increment_counter(&want);
  CHECK(back(counter).to_vector<int64_t>() == std::vector<int64_t>{want});
}

void check_relu(const Kernels& k, Device d, Rng& rng) {
  const int64_t n = 4099;
  const Tensor x = random_host({n}, rng), dy = random_host({n}, rng);
  Tensor got = empty_on({n}, d), want = empty_on({n}, Device::CPU);
  k.relu_forward(n, in(copy_on(x, d)), out(got));
  ref::relu_forward(n, in(x), out(want));
  check_close(back(got), want, 0, 0);
  Tensor dx_got = empty_on({n}, d), dx_want = empty_on({n}, Device::CPU);
  k.relu_backward(n, in(copy_on(want, d)), in(copy_on(dy, d)), out(dx_got));
  ref::relu_backward(n, in(want), in(dy), out(dx_want));
  check_close(back(dx_got), dx_want, 0, 0);
}

void check_gelu(const Kernels& k, Device d, Rng& rng) {
  if (!k.gelu_forward || !k.gelu_backward) {
    MESSAGE("this table has no GELU kernels: the op runs their references on the host");
    return;
  }
  const int64_t n = 4099;
  const Tensor x = random_host({n}, rng, -4.0f, 4.0f), dy = random_host({n}, rng);
  Tensor got = empty_on({n}, d), want = empty_on({n}, Device::CPU);
  k.gelu_forward(n, in(copy_on(x, d)), out(got));
  ref::gelu_forward(n, in(x), out(want));
  check_close(back(got), want, 1e-6, 1e-5);
  Tensor dx_got = empty_on({n}, d), dx_want = empty_on({n}, Device::CPU);
  k.gelu_backward(n, in(copy_on(x, d)), in(copy_on(dy, d)), out(dx_got));
  ref::gelu_backward(n, in(x), in(dy), out(dx_want));
  check_close(back(dx_got), dx_want, 1e-6, 1e-5);
}

void check_reduce_sum(const Kernels& k, Device d, Rng& rng) {
  const Shape shape = {3, 4, 5, 600};
  const Tensor x = random_host(shape, rng), x_d = copy_on(x, d);
  for (const std::vector<bool>& reduce : std::vector<std::vector<bool>>{
           {true, false, false, false}, {false, true, false, true}, {false, false, false, true}, {true, true, true, true}}) {
    ReduceGeom g;
    g.ndim = 4;
    int64_t out_n = 1;
    for (int i = 0; i < 4; ++i) {
      g.shape[i] = shape[static_cast<size_t>(i)];
      g.reduce[i] = reduce[static_cast<size_t>(i)];
      if (!g.reduce[i]) out_n *= g.shape[i];
    }
    Tensor got = empty_on({out_n}, d), want = empty_on({out_n}, Device::CPU);
    k.reduce_sum(g, in(x_d), out(got));
    ref::reduce_sum(g, in(x), out(want));
    check_close(back(got), want, 1e-5, 1e-5);
  }
}

// ---------------------------------------------------------------- gemm

void check_gemm(const Kernels& k, Device d, Rng& rng) {
  struct Case { int64_t M, N, K; float alpha, beta; };
  for (const Case& c : {Case{1, 1, 1, 1.0f, 0.0f}, Case{7, 5, 3, 0.5f, 1.0f}, Case{64, 33, 17, 1.0f, 0.0f},
                        Case{130, 70, 300, -1.0f, 0.25f}})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const int64_t lda = ta ? c.M : c.K, ldb = tb ? c.K : c.N;
        const Tensor A = random_host({c.M * c.K}, rng), B = random_host({c.K * c.N}, rng);
        Tensor C0 = random_host({c.M * c.N}, rng);
        if (c.beta == 0.0f) C0.fill_(std::numeric_limits<float>::quiet_NaN());  // never read with beta = 0
        Tensor got = copy_on(C0, d), want = C0.clone();
        k.gemm(ta, tb, c.M, c.N, c.K, c.alpha, in(copy_on(A, d)), lda, in(copy_on(B, d)), ldb, c.beta, out(got), c.N);
        ref::gemm(ta, tb, c.M, c.N, c.K, c.alpha, in(A), lda, in(B), ldb, c.beta, out(want), c.N);
        CAPTURE(c.M);
        CAPTURE(c.K);
        check_close(back(got), want, 1e-4, 1e-4);
      }
}

// ---------------------------------------------------------------- conv2d

Conv2dGeom conv(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t stride, int64_t pad) {
  Conv2dGeom g{N, C, H, W, K, R, R, stride, stride, pad, pad, 0, 0};
  g.P = (H + 2 * pad - R) / stride + 1;
  g.Q = (W + 2 * pad - R) / stride + 1;
  return g;
}

// 1x1, 3x3 same, stride 2 (odd and even sizes), batch 1, 3 input channels, many channels
// on a small map, a 5x5 filter, and the shapes of ResNet-20's layers that choose the
// fast CPU table's other algorithms (Winograd, images in vector lanes).
std::vector<Conv2dGeom> conv_cases() {
  return {conv(2, 3, 5, 5, 4, 1, 1, 0),    conv(2, 5, 7, 6, 3, 3, 1, 1),    conv(1, 4, 9, 9, 6, 3, 2, 1),
          conv(3, 8, 8, 8, 16, 3, 2, 1),   conv(2, 3, 11, 7, 5, 5, 1, 2),  conv(2, 128, 4, 4, 64, 3, 1, 1),
          conv(4, 16, 16, 16, 16, 3, 1, 1), conv(16, 64, 8, 8, 64, 3, 1, 1), conv(2, 16, 16, 16, 32, 1, 2, 0)};
}

double conv_tolerance(const Conv2dGeom& g) { return 2e-6 * std::sqrt(static_cast<double>(g.C * g.R * g.S)) + 1e-5; }

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

// ---------------------------------------------------------------- pooling

Pool2dGeom pool(int64_t N, int64_t C, int64_t H, int64_t W, int64_t k, int64_t stride, int64_t pad) {
  Pool2dGeom g{N, C, H, W, k, k, stride, stride, pad, pad, 0, 0};
  g.P = (H + 2 * pad - k) / stride + 1;
  g.Q = (W + 2 * pad - k) / stride + 1;
  return g;
}

void check_pool(const Kernels& k, Device d, Rng& rng) {
  for (const Pool2dGeom& g : {pool(2, 3, 8, 8, 2, 2, 0), pool(1, 2, 7, 9, 3, 1, 1), pool(3, 4, 9, 7, 3, 2, 1),
                              pool(2, 16, 8, 8, 8, 1, 0)}) {
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

// ---------------------------------------------------------------- the table

struct KernelCheck {
  const char* kernels;
  void (*check)(const Kernels&, Device, Rng&);
};

const KernelCheck kKernelChecks[] = {
    {"fill", check_fill},
    {"copy_strided", check_copy_strided},
    {"binary", check_binary},
    {"scalar, unary", check_scalar_and_unary},
    {"axpy, multi_lerp", check_axpy_and_multi_lerp},
    {"increment_counter", check_increment_counter},
    {"relu_forward, relu_backward", check_relu},
    {"gelu_forward, gelu_backward", check_gelu},
    {"reduce_sum", check_reduce_sum},
    {"gemm", check_gemm},
    {"conv2d_forward, conv2d_backward_data, conv2d_backward_filter", check_conv2d},
    {"conv2d fused: epilogue, plane moments, data gradient in place and added", check_conv2d_fused},
    {"batchnorm_forward_train, batchnorm_forward_eval, batchnorm_backward", check_batchnorm},
    {"batchnorm fused: plane moments, epilogue, backward through the ReLU", check_batchnorm_fused},
    {"max_pool2d, avg_pool2d", check_pool},
    {"log_softmax, cross_entropy", check_loss},
    {"sgd_step", check_sgd_step},
    {"dropout_forward, dropout_backward", check_dropout},
};

// The device's own table (not the reference that POLYAK_KERNELS=reference puts in the
// CPU's place: this test is about the fast kernels).
void check_table(Device device) {
  const Kernels& table = backend(device).native_kernels();
  for (const KernelCheck& check : kKernelChecks) {
    const std::string what = std::string(check.kernels) + " on " + device_name(device);
    INFO(what);
    Rng rng(11);
    check.check(table, device, rng);
  }
}

}  // namespace

TEST_CASE("kernels: every kernel of the CPU table agrees with its reference") { check_table(Device::CPU); }

TEST_CASE("kernels: the reference table has every kernel, and POLYAK_KERNELS=reference puts it in the CPU's place") {
  const Kernels& ref_table = reference_kernels();
#define POLYAK_CHECK_PRESENT(name, type)       \
  {                                            \
    const bool present = ref_table.name != nullptr; \
    CHECK_MESSAGE(present, #name);             \
  }
  POLYAK_KERNELS(POLYAK_CHECK_PRESENT)
#undef POLYAK_CHECK_PRESENT
  const bool fused = ref_table.conv2d_forward_epilogue != nullptr;
  CHECK_FALSE(fused);  // the fusions are the fast tables' own
  const bool was = using_reference_kernels();
  use_reference_kernels(true);
  CHECK(&kernels(Device::CPU) == &ref_table);
  use_reference_kernels(false);
  CHECK(&kernels(Device::CPU) == &backend(Device::CPU).native_kernels());
  use_reference_kernels(was);
}

TEST_CASE("kernels: every kernel of the GPU table agrees with its reference") {
  polyak::testing::for_each_accelerator(check_table);
}
