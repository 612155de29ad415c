// Kernel checks: fill, copies, elementwise maps, axpy and multi_lerp, counters, ReLU, GELU, sums, GEMM.
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
static std::vector<BroadcastGeom> broadcast_cases() {
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
  // Most inputs where GELU bends, a tenth far out in the tails (down to -12, where Phi
  // is about 1e-33 and a fast path's erfc must keep its relative accuracy).
  Tensor x = random_host({n}, rng, -4.0f, 4.0f), dy = random_host({n}, rng);
  const Tensor tails = random_host({n / 10}, rng, -12.0f, 12.0f);
  x.slice(0, n / 10).copy_(tails);
  Tensor got = empty_on({n}, d), want = empty_on({n}, Device::CPU);
  k.gelu_forward(n, in(copy_on(x, d)), out(got));
  ref::gelu_forward(n, in(x), out(want));
  check_close(back(got), want, 1e-30, 1e-5);  // relative, also in the tails
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

}  // namespace polyak::kernel_checks
