// conv2d: hand-computed values, the im2col+GEMM kernels against a direct 7-loop
// convolution, finite-difference gradients, CPU-vs-GPU parity and shape errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/settings.h"
#include "engine/ops.h"
#include "engine/parallel.h"
#include "engine/rng.h"
#include "support/gradcheck.h"
#include "support/threads_scope.h"

using namespace polyak;
using polyak::testing::ThreadsScope;
using polyak::testing::check_close;
using polyak::testing::gradcheck;

namespace {

struct ConvCase {
  int64_t N, C, H, W, K, R, S, stride, pad;
  bool bias;
};

int64_t out_size(int64_t in, int64_t k, int64_t stride, int64_t pad) { return (in + 2 * pad - k) / stride + 1; }

// The definition, one output (or gradient) element at a time, accumulated in double.
struct NaiveConv {
  ConvCase c;
  int64_t P, Q;
  explicit NaiveConv(const ConvCase& cc)
      : c(cc), P(out_size(cc.H, cc.R, cc.stride, cc.pad)), Q(out_size(cc.W, cc.S, cc.stride, cc.pad)) {}

  int64_t xi(int64_t n, int64_t ch, int64_t h, int64_t w) const { return ((n * c.C + ch) * c.H + h) * c.W + w; }
  int64_t wi(int64_t k, int64_t ch, int64_t r, int64_t s) const { return ((k * c.C + ch) * c.R + r) * c.S + s; }
  int64_t yi(int64_t n, int64_t k, int64_t p, int64_t q) const { return ((n * c.K + k) * P + p) * Q + q; }

  // Calls f(n, k, p, q, ch, r, s, h, w) for every in-image term of the convolution sum.
  template <class F>
  void for_each_term(F&& f) const {
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t k = 0; k < c.K; ++k)
        for (int64_t p = 0; p < P; ++p)
          for (int64_t q = 0; q < Q; ++q)
            for (int64_t ch = 0; ch < c.C; ++ch)
              for (int64_t r = 0; r < c.R; ++r)
                for (int64_t s = 0; s < c.S; ++s) {
                  const int64_t h = p * c.stride - c.pad + r, w = q * c.stride - c.pad + s;
                  if (h >= 0 && h < c.H && w >= 0 && w < c.W) f(n, k, p, q, ch, r, s, h, w);
                }
  }

  std::vector<float> forward(const std::vector<float>& x, const std::vector<float>& w,
                             const std::vector<float>& b) const {
    std::vector<double> y(static_cast<size_t>(c.N * c.K * P * Q), 0.0);
    for_each_term([&](auto n, auto k, auto p, auto q, auto ch, auto r, auto s, auto h, auto ww) {
      y[yi(n, k, p, q)] += static_cast<double>(w[wi(k, ch, r, s)]) * x[xi(n, ch, h, ww)];
    });
    if (!b.empty())
      for (int64_t n = 0; n < c.N; ++n)
        for (int64_t k = 0; k < c.K; ++k)
          for (int64_t i = 0; i < P * Q; ++i) y[yi(n, k, 0, 0) + i] += b[k];
    return {y.begin(), y.end()};
  }

  std::vector<float> backward_data(const std::vector<float>& dy, const std::vector<float>& w) const {
    std::vector<double> dx(static_cast<size_t>(c.N * c.C * c.H * c.W), 0.0);
    for_each_term([&](auto n, auto k, auto p, auto q, auto ch, auto r, auto s, auto h, auto ww) {
      dx[xi(n, ch, h, ww)] += static_cast<double>(w[wi(k, ch, r, s)]) * dy[yi(n, k, p, q)];
    });
    return {dx.begin(), dx.end()};
  }

  std::vector<float> backward_filter(const std::vector<float>& x, const std::vector<float>& dy) const {
    std::vector<double> dw(static_cast<size_t>(c.K * c.C * c.R * c.S), 0.0);
    for_each_term([&](auto n, auto k, auto p, auto q, auto ch, auto r, auto s, auto h, auto ww) {
      dw[wi(k, ch, r, s)] += static_cast<double>(x[xi(n, ch, h, ww)]) * dy[yi(n, k, p, q)];
    });
    return {dw.begin(), dw.end()};
  }

  std::vector<float> backward_bias(const std::vector<float>& dy) const {
    std::vector<double> db(static_cast<size_t>(c.K), 0.0);
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t k = 0; k < c.K; ++k)
        for (int64_t i = 0; i < P * Q; ++i) db[k] += dy[yi(n, k, 0, 0) + i];
    return {db.begin(), db.end()};
  }
};

const std::vector<ConvCase> kCases = {
    {1, 1, 5, 5, 1, 3, 3, 1, 0, false},   // smallest 3x3
    {2, 3, 7, 5, 4, 3, 3, 1, 1, true},    // odd, non-square input, "same" padding
    {3, 2, 9, 7, 5, 3, 3, 2, 1, true},    // stride 2 with padding
    {4, 5, 6, 6, 3, 1, 1, 1, 0, true},    // 1x1: no im2col
    {2, 4, 7, 7, 6, 1, 1, 2, 0, false},   // 1x1 stride 2: im2col path
    {1, 3, 8, 8, 2, 5, 5, 1, 2, true},    // 5x5, padding 2
    {5, 2, 11, 10, 3, 3, 2, 2, 0, false}, // non-square kernel
    {2, 3, 4, 4, 2, 4, 4, 1, 0, true},    // kernel covers the whole input
    {2, 2, 3, 3, 2, 3, 3, 3, 1, false},   // stride 3 with padding
    {8, 16, 9, 9, 16, 3, 3, 1, 1, true},  // enough work to fork threads
    {6, 16, 8, 8, 24, 1, 1, 1, 0, true},  // threaded 1x1
    {7, 8, 10, 10, 8, 3, 3, 2, 1, true},  // threaded, stride 2, odd batch
};

std::string describe(const ConvCase& c) {
  std::ostringstream out;
  out << "N" << c.N << " C" << c.C << " " << c.H << "x" << c.W << " K" << c.K << " " << c.R << "x" << c.S
      << " stride " << c.stride << " pad " << c.pad << (c.bias ? " bias" : "");
  return out.str();
}

struct ConvTensors {
  Tensor x, w, b, dy;
};

ConvTensors random_conv_tensors(const ConvCase& c, Rng& rng) {
  const int64_t P = out_size(c.H, c.R, c.stride, c.pad), Q = out_size(c.W, c.S, c.stride, c.pad);
  ConvTensors t;
  t.x = Tensor::uniform({c.N, c.C, c.H, c.W}, -1.0f, 1.0f, rng);
  t.w = Tensor::uniform({c.K, c.C, c.R, c.S}, -1.0f, 1.0f, rng);
  if (c.bias) t.b = Tensor::uniform({c.K}, -1.0f, 1.0f, rng);
  t.dy = Tensor::uniform({c.N, c.K, P, Q}, -1.0f, 1.0f, rng);
  return t;
}

}  // namespace

TEST_SUITE("conv2d") {

TEST_CASE("conv2d forward: 3x3 on a 4x4 ramp, by hand") {
  // x[h, w] = 4h + w. With an all-ones 3x3 filter each output is the sum of its window:
  // y[p, q] = sum_{r,s} 4(p+r) + (q+s) = 9(4p + q) + 36 + 9 = 36p + 9q + 45.
  std::vector<float> ramp(16);
  for (int i = 0; i < 16; ++i) ramp[i] = static_cast<float>(i);
  const Tensor x = Tensor::from_vector(ramp, {1, 1, 4, 4});
  const Tensor ones = Tensor::ones({1, 1, 3, 3});

  SUBCASE("valid") {
    const Tensor y = conv2d(x, ones);
    CHECK(y.shape() == Shape{1, 1, 2, 2});
    check_close(y, {45, 54, 81, 90});
  }
  SUBCASE("padding 1: border windows lose their outside taps") {
    // y[0,0] = x[0,0] + x[0,1] + x[1,0] + x[1,1] = 0 + 1 + 4 + 5 = 10, and so on.
    const Tensor y = conv2d(x, ones, {}, {.stride = 1, .padding = 1});
    CHECK(y.shape() == Shape{1, 1, 4, 4});
    check_close(y, {10, 18, 24, 18, 27, 45, 54, 39, 51, 81, 90, 63, 42, 66, 72, 50});
  }
  SUBCASE("stride 2, padding 1, filter 1..9, bias 0.5") {
    // y[0,0] = 0.5 + w[1,1]*x[0,0] + w[1,2]*x[0,1] + w[2,1]*x[1,0] + w[2,2]*x[1,1]
    //        = 0.5 + 5*0 + 6*1 + 8*4 + 9*5 = 83.5
    std::vector<float> taps(9);
    for (int i = 0; i < 9; ++i) taps[i] = static_cast<float>(i + 1);
    const Tensor w = Tensor::from_vector(taps, {1, 1, 3, 3});
    const Tensor b = Tensor::from_vector({0.5f}, {1});
    const Tensor y = conv2d(x, w, b, {.stride = 2, .padding = 1});
    CHECK(y.shape() == Shape{1, 1, 2, 2});
    check_close(y, {83.5f, 178.5f, 330.5f, 528.5f});
  }
  SUBCASE("two filters and a bias: channels stack") {
    // Filter 0 is all ones (the window sums above), filter 1 picks the centre tap;
    // bias (1, -1).
    std::vector<float> taps(18, 0.0f);
    for (int i = 0; i < 9; ++i) taps[i] = 1.0f;
    taps[9 + 4] = 1.0f;
    const Tensor w = Tensor::from_vector(taps, {2, 1, 3, 3});
    const Tensor b = Tensor::from_vector({1.0f, -1.0f}, {2});
    const Tensor y = conv2d(x, w, b);
    CHECK(y.shape() == Shape{1, 2, 2, 2});
    check_close(y, {46, 55, 82, 91, 4, 5, 8, 9});
  }
}

TEST_CASE("conv2d kernels match a direct 7-loop convolution") {
  Rng rng(1234);
  for (int threads : {1, 2, 3}) {
    ThreadsScope scope(threads);
    for (const ConvCase& c : kCases) {
      CAPTURE(threads);
      INFO(describe(c));
      const NaiveConv ref(c);
      const ConvTensors t = random_conv_tensors(c, rng);
      const std::vector<float> xv = t.x.to_vector<float>(), wv = t.w.to_vector<float>(),
                               dyv = t.dy.to_vector<float>();
      const std::vector<float> bv = c.bias ? t.b.to_vector<float>() : std::vector<float>{};

      Tensor x = t.x.clone(), w = t.w.clone(), b = c.bias ? t.b.clone() : Tensor();
      x.requires_grad_();
      w.requires_grad_();
      if (c.bias) b.requires_grad_();
      const Tensor y = conv2d(x, w, b, {.stride = c.stride, .padding = c.pad});
      REQUIRE(y.shape() == Shape{c.N, c.K, ref.P, ref.Q});
      check_close(y, ref.forward(xv, wv, bv), 1e-4, 1e-4);

      y.backward(t.dy);
      check_close(x.grad(), ref.backward_data(dyv, wv), 1e-4, 1e-4);
      check_close(w.grad(), ref.backward_filter(xv, dyv), 1e-4, 1e-4);
      if (c.bias) check_close(b.grad(), ref.backward_bias(dyv), 1e-4, 1e-4);
    }
  }
}

TEST_CASE("conv2d kernels overwrite their outputs") {
  // Backend contract: outputs are written in full, whatever they held before.
  const ConvCase c{3, 4, 7, 6, 5, 3, 3, 2, 1, true};
  Rng rng(99);
  const ConvTensors t = random_conv_tensors(c, rng);
  const NaiveConv ref(c);
  const Conv2dGeom g{c.N, c.C, c.H, c.W, c.K, c.R, c.S, c.stride, c.stride, c.pad, c.pad, ref.P, ref.Q};
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor y = Tensor::full({c.N, c.K, ref.P, ref.Q}, nan);
  Tensor dx = Tensor::full({c.N, c.C, c.H, c.W}, nan);
  Tensor dw = Tensor::full({c.K, c.C, c.R, c.S}, nan);
  Tensor db = Tensor::full({c.K}, nan);
  const Kernels& be = cpu::fast_kernels();
  for (int repeat = 0; repeat < 2; ++repeat) {  // a second call reuses the scratch buffers
    be.conv2d_forward(g, t.x.data<float>(), t.w.data<float>(), nullptr, y.data<float>());
    be.conv2d_backward_data(g, t.dy.data<float>(), t.w.data<float>(), dx.data<float>());
    be.conv2d_backward_filter(g, t.x.data<float>(), t.dy.data<float>(), dw.data<float>(), db.data<float>());
    const std::vector<float> xv = t.x.to_vector<float>(), wv = t.w.to_vector<float>(), dyv = t.dy.to_vector<float>();
    check_close(y, ref.forward(xv, wv, {}), 1e-4, 1e-4);
    check_close(dx, ref.backward_data(dyv, wv), 1e-4, 1e-4);
    check_close(dw, ref.backward_filter(xv, dyv), 1e-4, 1e-4);
    check_close(db, ref.backward_bias(dyv), 1e-4, 1e-4);
  }
}

TEST_CASE("conv2d computes only the gradients that are needed") {
  Rng rng(5);
  const ConvCase c{2, 3, 5, 5, 4, 3, 3, 1, 1, true};
  const NaiveConv ref(c);
  const ConvTensors t = random_conv_tensors(c, rng);
  const std::vector<float> xv = t.x.to_vector<float>(), wv = t.w.to_vector<float>(), dyv = t.dy.to_vector<float>();

  SUBCASE("input only") {
    Tensor x = t.x.clone();
    x.requires_grad_();
    conv2d(x, t.w, t.b, {.stride = 1, .padding = 1}).backward(t.dy);
    check_close(x.grad(), ref.backward_data(dyv, wv), 1e-4, 1e-4);
    CHECK_FALSE(t.w.grad().defined());
    CHECK_FALSE(t.b.grad().defined());
  }
  SUBCASE("weight only") {
    Tensor w = t.w.clone();
    w.requires_grad_();
    conv2d(t.x, w, t.b, {.stride = 1, .padding = 1}).backward(t.dy);
    check_close(w.grad(), ref.backward_filter(xv, dyv), 1e-4, 1e-4);
    CHECK_FALSE(t.x.grad().defined());
  }
  SUBCASE("bias only") {
    Tensor b = t.b.clone();
    b.requires_grad_();
    conv2d(t.x, t.w, b, {.stride = 1, .padding = 1}).backward(t.dy);
    check_close(b.grad(), ref.backward_bias(dyv), 1e-4, 1e-4);
  }
  SUBCASE("no grad mode records nothing") {
    Tensor w = t.w.clone();
    w.requires_grad_();
    NoGradGuard no_grad;
    const Tensor y = conv2d(t.x, w, t.b, {.stride = 1, .padding = 1});
    CHECK_FALSE(y.requires_grad());
  }
}

TEST_CASE("conv2d accepts non-contiguous inputs") {
  Rng rng(8);
  // x as the transpose of a (N,C,W,H) tensor, so its H and W strides are swapped.
  const Tensor base = Tensor::uniform({2, 3, 6, 5}, -1.0f, 1.0f, rng);
  const Tensor x = base.transpose(2, 3);
  const Tensor w = Tensor::uniform({4, 3, 3, 3}, -1.0f, 1.0f, rng);
  REQUIRE_FALSE(x.is_contiguous());
  check_close(conv2d(x, w, {}, {.stride = 1, .padding = 1}), conv2d(x.contiguous(), w, {}, {.stride = 1, .padding = 1}),
              1e-6, 1e-6);
}

TEST_CASE("conv2d gradients match finite differences") {
  struct GradCase {
    const char* name;
    ConvCase c;
  };
  const std::vector<GradCase> cases = {
      {"3x3 stride 1 pad 1", {2, 3, 5, 5, 4, 3, 3, 1, 1, false}},
      {"3x3 stride 2 pad 1, bias", {2, 2, 6, 5, 3, 3, 3, 2, 1, true}},
      {"1x1, bias", {2, 4, 4, 3, 3, 1, 1, 1, 0, true}},
      {"1x1 stride 2", {1, 3, 5, 5, 2, 1, 1, 2, 0, false}},
  };
  Rng rng(21);
  for (const GradCase& gc : cases) {
    INFO(std::string(gc.name));
    const ConvCase& c = gc.c;
    const ConvTensors t = random_conv_tensors(c, rng);
    Tensor x = t.x, w = t.w, b = t.b;
    x.requires_grad_();
    w.requires_grad_();
    std::vector<Tensor> inputs{x, w};  // gradcheck takes defined tensors only: the bias is there or not
    if (c.bias) inputs.push_back(b.requires_grad_());
    const Conv2dOptions options{.stride = c.stride, .padding = c.pad};
    gradcheck(
        [options](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), options); },
        inputs);
  }
}

TEST_CASE("conv2d CPU-vs-GPU parity") {
  testing::for_each_accelerator([](Device device) {
    Rng rng(77);
    for (const ConvCase& c : kCases) {
      INFO(describe(c));
      const ConvTensors t = random_conv_tensors(c, rng);
      const Conv2dOptions options{.stride = c.stride, .padding = c.pad};

      Tensor x = t.x.clone(), w = t.w.clone(), b = c.bias ? t.b.clone() : Tensor();
      x.requires_grad_();
      w.requires_grad_();
      if (c.bias) b.requires_grad_();
      const Tensor y = conv2d(x, w, b, options);
      y.backward(t.dy);

      Tensor xd = t.x.to(device), wd = t.w.to(device), bd = c.bias ? t.b.to(device) : Tensor();
      xd.requires_grad_();
      wd.requires_grad_();
      if (c.bias) bd.requires_grad_();
      const Tensor yd = conv2d(xd, wd, bd, options);
      CHECK(yd.device() == device);
      yd.backward(t.dy.to(device));

      // Tolerance 1e-4 absolute + 1e-4 relative: the GPU sums in another order (and
      // cuDNN may pick Winograd or FFT algorithms).
      check_close(yd, y, 1e-4, 1e-4);
      check_close(xd.grad(), x.grad(), 1e-4, 1e-4);
      check_close(wd.grad(), w.grad(), 1e-4, 1e-4);
      if (c.bias) check_close(bd.grad(), b.grad(), 1e-4, 1e-4);
    }
  });
}

TEST_CASE("conv2d backward: dx over an incoming gradient nothing else sees, the same gradients; shared dy untouched") {
  Rng rng(17);
  ThreadsScope scope(2);
  // 8 channels in and out at 9x9, stride 1, padding 1: dx has dy's shape.
  const Tensor x0 = Tensor::normal({3, 8, 9, 9}, 0.0f, 1.0f, rng), w0 = Tensor::normal({8, 8, 3, 3}, 0.0f, 0.3f, rng);
  const Tensor dy = Tensor::normal({3, 8, 9, 9}, 0.0f, 1.0f, rng);
  const std::vector<float> dy_values = dy.to_vector<float>();
  // Unless `shared`, the convolution's incoming gradient is that of a product by 1,
  // which nothing else sees: its data gradient may be written over it.
  const auto gradients = [&](bool shared) {
    const Tensor x = (x0 * 1.0f).detach().requires_grad_(), w = w0.clone().requires_grad_();
    const Tensor y = conv2d(x, w, {}, {.stride = 1, .padding = 1});
    if (shared) {
      y.backward(dy);
      CHECK(dy.to_vector<float>() == dy_values);
    } else {
      (y * 1.0f).backward(dy);
    }
    return std::vector<std::vector<float>>{x.grad().to_vector<float>(), w.grad().to_vector<float>()};
  };
  const auto in_place = gradients(false), shared = gradients(true);
  CHECK(in_place == shared);
  const NaiveConv ref({3, 8, 9, 9, 8, 3, 3, 1, 1, false});
  check_close(Tensor::from_vector(in_place[0], {3, 8, 9, 9}), ref.backward_data(dy_values, w0.to_vector<float>()),
              1e-4, 1e-4);
}

TEST_CASE("conv2d rejects bad shapes with clear messages") {
  const Tensor x = Tensor::zeros({2, 3, 5, 5});
  const Tensor w = Tensor::zeros({4, 3, 3, 3});
  using doctest::Contains;
  CHECK_THROWS_WITH_AS(conv2d_with_moments(x, w, {}, {.relu = true}),
                       Contains("the plane moments are the convolution's own output's: no fused ReLU"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(conv2d(Tensor::zeros({3, 5, 5}), w), Contains("input must be 4-D (N, C, H, W), got shape [3, 5, 5]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::zeros({4, 3, 3})), Contains("weight must be 4-D (K, C, R, S), got shape [4, 3, 3]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::zeros({4, 2, 3, 3})),
                       Contains("input shape [2, 3, 5, 5] has 3 channels but weight shape [4, 2, 3, 3] expects 2"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(conv2d(x, w, Tensor::zeros({3})),
                       Contains("bias shape [3] does not match the 4 output channels of weight shape [4, 3, 3, 3]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(conv2d(x, Tensor::zeros({4, 3, 7, 7}), {}, {.stride = 1, .padding = 0}),
                       Contains("kernel 7x7 is larger than the padded input 5x5 (input shape [2, 3, 5, 5], padding 0)"),
                       std::invalid_argument);
  CHECK_NOTHROW(conv2d(x, Tensor::zeros({4, 3, 7, 7}), {}, {.stride = 1, .padding = 1}));
  CHECK_THROWS_WITH_AS(conv2d(x, w, {}, {.stride = 0, .padding = 0}), Contains("stride must be at least 1, got 0"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(conv2d(x, w, {}, {.stride = 1, .padding = -1}), Contains("padding must be non-negative, got -1"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(conv2d(Tensor::zeros({2, 3, 5, 5}, DType::I32), w), Contains("must be float32"),
                       std::invalid_argument);
}

}  // TEST_SUITE

namespace {

// Sets a global CUDA switch for one scope.
struct ScopedSwitch {
  void (*set)(bool);
  ScopedSwitch(void (*setter)(bool), bool on) : set(setter) { set(on); }
  ~ScopedSwitch() { set(false); }
};

struct ConvResults {
  std::vector<float> y, dx, dw, db;
};

ConvResults run_conv(const ConvCase& c, const ConvTensors& t, Device device) {
  const Conv2dOptions options{.stride = c.stride, .padding = c.pad};
  Tensor x = t.x.to(device), w = t.w.to(device), b = c.bias ? t.b.to(device) : Tensor();
  x.requires_grad_();
  w.requires_grad_();
  if (c.bias) b.requires_grad_();
  const Tensor y = conv2d(x, w, b, options);
  y.backward(t.dy.to(device));
  return {y.to_vector<float>(), x.grad().to_vector<float>(), w.grad().to_vector<float>(),
          c.bias ? b.grad().to_vector<float>() : std::vector<float>{}};
}

}  // namespace

TEST_CASE("conv2d on the accelerator: the im2col + cuBLAS fallback matches the CPU") {
  testing::for_each_accelerator([](Device device) {
    const ScopedSwitch fallback(set_cuda_conv_force_fallback, true);
    Rng rng(78);
    for (const ConvCase& c : kCases) {
      INFO(describe(c));
      const ConvTensors t = random_conv_tensors(c, rng);
      const ConvResults cpu = run_conv(c, t, Device::CPU), gpu = run_conv(c, t, device);
      check_close(Tensor::from_vector(gpu.y, {static_cast<int64_t>(gpu.y.size())}), cpu.y, 1e-4, 1e-4);
      check_close(Tensor::from_vector(gpu.dx, {static_cast<int64_t>(gpu.dx.size())}), cpu.dx, 1e-4, 1e-4);
      check_close(Tensor::from_vector(gpu.dw, {static_cast<int64_t>(gpu.dw.size())}), cpu.dw, 1e-4, 1e-4);
      if (c.bias) check_close(Tensor::from_vector(gpu.db, {static_cast<int64_t>(gpu.db.size())}), cpu.db, 1e-4, 1e-4);
    }
  });
}

TEST_CASE("conv2d on the accelerator: deterministic mode repeats bit for bit, TF32 stays close") {
  testing::for_each_accelerator([](Device device) {
    Rng rng(79);
    const ConvCase c{16, 32, 16, 16, 32, 3, 3, 1, 1, true};
    const ConvTensors t = random_conv_tensors(c, rng);
    {
      const ScopedSwitch deterministic(set_cuda_deterministic, true);
      const ConvResults first = run_conv(c, t, device), second = run_conv(c, t, device);
      CHECK(first.y == second.y);
      CHECK(first.dx == second.dx);
      CHECK(first.dw == second.dw);
      CHECK(first.db == second.db);
    }
    {
      // TF32 rounds the inputs to 10 mantissa bits: close to FP32, not equal.
      const ScopedSwitch tf32(set_cuda_tf32, true);
      const ConvResults cpu = run_conv(c, t, Device::CPU), gpu = run_conv(c, t, device);
      check_close(Tensor::from_vector(gpu.y, {static_cast<int64_t>(gpu.y.size())}), cpu.y, 5e-2, 1e-2);
    }
  });
}

TEST_CASE("conv2d gradients match finite differences on the accelerator") {
  testing::for_each_accelerator([](Device device) {
    Rng rng(80);
    for (const ConvCase& c : {ConvCase{2, 3, 7, 5, 4, 3, 3, 1, 1, true}, ConvCase{3, 2, 9, 7, 5, 3, 3, 2, 1, false},
                              ConvCase{2, 4, 7, 7, 6, 1, 1, 2, 0, true}}) {
      INFO(describe(c));
      const ConvTensors t = random_conv_tensors(c, rng);
      Tensor x = t.x.to(device), w = t.w.to(device);
      x.requires_grad_();
      w.requires_grad_();
      std::vector<Tensor> inputs{x, w};
      if (c.bias) inputs.push_back(t.b.to(device).requires_grad_());
      const Conv2dOptions options{.stride = c.stride, .padding = c.pad};
      gradcheck([options](const std::vector<Tensor>& in) {
        return conv2d(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), options);
      }, inputs);
    }
  });
}

namespace {

using polyak::testing::EpilogueResults;

// relu(conv2d(x) + residual) (the residual when given) on `device`, fused or as separate
// ops, and its gradients for the upstream gradient dy (fresh leaves per run).
EpilogueResults run_conv_epilogue(bool fused, Device device, const ConvTensors& t, const Conv2dOptions& options,
                              const Tensor& residual, const Tensor& dy) {
  EpilogueResults run;
  const Tensor x = t.x.clone().to(device).requires_grad_(), w = t.w.clone().to(device).requires_grad_(),
               b = t.b.clone().to(device).requires_grad_();
  const Tensor r = residual.defined() ? residual.clone().to(device).requires_grad_() : Tensor();
  if (fused) {
    Conv2dOptions relu_options = options;
    relu_options.relu = true;
    run.y = conv2d(x, w, b, relu_options, r);
  } else {
    run.y = conv2d(x, w, b, options);
    if (r.defined()) run.y = run.y + r;
    run.y = relu(run.y);
  }
  run.y.backward(dy.to(device));
  run.dx = x.grad(), run.dw = w.grad(), run.db = b.grad();
  if (r.defined()) run.dr = r.grad();
  return run;
}


// Shifted rows (stride 1), im2col (stride 2) and a pointwise convolution.
const ConvCase kEpilogueCases[] = {ConvCase{2, 3, 7, 6, 4, 3, 3, 1, 1, true}, ConvCase{3, 2, 9, 7, 5, 3, 3, 2, 1, true},
                                   ConvCase{2, 4, 5, 5, 3, 1, 1, 1, 0, true}};

// One case's random tensors, options, and a residual and upstream gradient shaped as
// its output.
struct EpilogueCase {
  ConvTensors t;
  Conv2dOptions options;
  Tensor residual, dy;
};

EpilogueCase random_epilogue_case(const ConvCase& c, Rng& rng) {
  EpilogueCase e{random_conv_tensors(c, rng), {.stride = c.stride, .padding = c.pad}, {}, {}};
  const Shape out_shape = conv2d(e.t.x, e.t.w, e.t.b, e.options).shape();
  e.residual = Tensor::normal(out_shape, 0.0f, 1.0f, rng);
  e.dy = Tensor::normal(out_shape, 0.0f, 1.0f, rng);
  return e;
}

}  // namespace

TEST_CASE("conv2d fused epilogue: relu(conv(x) + residual) matches the separate ops") {
  Rng rng(90);
  for (const ConvCase& c : kEpilogueCases) {
    INFO(describe(c));
    const auto [t, options, residual, dy] = random_epilogue_case(c, rng);
    for (const bool with_residual : {false, true}) {
      CAPTURE(with_residual);
      const Tensor r = with_residual ? residual : Tensor();
      const EpilogueResults fused = run_conv_epilogue(true, Device::CPU, t, options, r, dy);
      testing::check_epilogue_results(fused, run_conv_epilogue(false, Device::CPU, t, options, r, dy), 1e-5);
      const std::vector<float> y = fused.y.to_vector<float>();
      CHECK(std::count(y.begin(), y.end(), 0.0f) > 0);  // the ReLU cut something
    }
    // The epilogue's gradients, residual included, against finite differences.
    const Tensor x = t.x.clone().requires_grad_(), w = t.w.clone().requires_grad_(), b = t.b.clone().requires_grad_();
    Conv2dOptions relu_options = options;
    relu_options.relu = true;
    gradcheck([relu_options](const std::vector<Tensor>& in) { return conv2d(in[0], in[1], in[2], relu_options, in[3]); },
              {x, w, b, residual.clone().requires_grad_()}, {.eps = 1e-3f});
  }
  CHECK_THROWS_WITH_AS(conv2d(Tensor::ones({1, 2, 4, 4}), Tensor::ones({3, 2, 3, 3}), {}, {}, Tensor::ones({1, 3, 4, 4})),
                       "conv2d: the residual must be float32 [1, 3, 2, 2] on cpu like the output, got float32 "
                       "[1, 3, 4, 4] on cpu",
                       std::invalid_argument);
}

TEST_CASE("conv2d fused epilogue parity: CPU vs accelerator") {
  testing::for_each_accelerator([](Device device) {
    Rng rng(91);
    for (const ConvCase& c : kEpilogueCases) {
      INFO(describe(c));
      const EpilogueCase e = random_epilogue_case(c, rng);
      testing::check_epilogue_results(run_conv_epilogue(true, device, e.t, e.options, e.residual, e.dy),
                                      run_conv_epilogue(true, Device::CPU, e.t, e.options, e.residual, e.dy), 1e-4);
    }
  });
}
