// Pooling: hand-computed values, the kernels against a direct loop, finite-difference
// gradients, CPU-vs-GPU parity and shape errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;
using polyak::testing::gradcheck;

namespace {

// The integers 0..n-1 in random order, times `scale`, as a tensor: distinct values
// spaced well beyond a finite-difference step, so max pooling has no ties or kinks.
Tensor permuted_values(const Shape& shape, float scale, Rng& rng) {
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  std::iota(values.begin(), values.end(), 0.0f);
  for (size_t i = values.size(); i > 1; --i) std::swap(values[i - 1], values[rng.below(i)]);
  for (float& v : values) v *= scale;
  return Tensor::from_vector(values, shape);
}

struct PoolCase {
  int64_t N, C, H, W, kernel, stride, pad;
};

std::string describe(const PoolCase& c) {
  std::ostringstream out;
  out << "N" << c.N << " C" << c.C << " " << c.H << "x" << c.W << " kernel " << c.kernel << " stride " << c.stride
      << " pad " << c.pad;
  return out.str();
}

const std::vector<PoolCase> kCases = {
    {1, 1, 4, 4, 2, 2, 0},   {2, 3, 7, 5, 3, 2, 1}, {3, 2, 9, 9, 3, 1, 1},    {2, 4, 8, 6, 2, 1, 0},
    {1, 2, 5, 7, 5, 5, 2},   {4, 3, 6, 6, 4, 3, 2}, {16, 32, 16, 16, 2, 2, 0}, {8, 16, 11, 13, 3, 2, 1},
};

// Direct loops over each window: max (first of the largest, padding excluded) and
// average (divisor kernel^2), forward and backward.
struct NaivePool {
  PoolCase c;
  int64_t P, Q;
  explicit NaivePool(const PoolCase& cc)
      : c(cc), P((cc.H + 2 * cc.pad - cc.kernel) / cc.stride + 1), Q((cc.W + 2 * cc.pad - cc.kernel) / cc.stride + 1) {}

  template <class F>
  void for_each_window(F&& f) const {  // f(plane, out_index, in_indices)
    for (int64_t plane = 0; plane < c.N * c.C; ++plane)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t q = 0; q < Q; ++q) {
          std::vector<int64_t> cells;
          for (int64_t h = p * c.stride - c.pad; h < p * c.stride - c.pad + c.kernel; ++h)
            for (int64_t w = q * c.stride - c.pad; w < q * c.stride - c.pad + c.kernel; ++w)
              if (h >= 0 && h < c.H && w >= 0 && w < c.W) cells.push_back(plane * c.H * c.W + h * c.W + w);
          f((plane * P + p) * Q + q, cells);
        }
  }

  void max(const std::vector<float>& x, const std::vector<float>& dy, std::vector<float>& y,
           std::vector<float>& dx) const {
    y.assign(static_cast<size_t>(c.N * c.C * P * Q), 0.0f);
    dx.assign(x.size(), 0.0f);
    for_each_window([&](int64_t out, const std::vector<int64_t>& cells) {
      int64_t best = cells[0];
      for (int64_t i : cells)
        if (x[i] > x[best]) best = i;
      y[out] = x[best];
      dx[best] += dy[out];
    });
  }

  void avg(const std::vector<float>& x, const std::vector<float>& dy, std::vector<float>& y,
           std::vector<float>& dx) const {
    y.assign(static_cast<size_t>(c.N * c.C * P * Q), 0.0f);
    dx.assign(x.size(), 0.0f);
    const double divisor = static_cast<double>(c.kernel * c.kernel);
    for_each_window([&](int64_t out, const std::vector<int64_t>& cells) {
      double total = 0.0;
      for (int64_t i : cells) total += x[i];
      y[out] = static_cast<float>(total / divisor);
      for (int64_t i : cells) dx[i] += static_cast<float>(dy[out] / divisor);
    });
  }
};

Pool2dOptions options_of(const PoolCase& c) { return {.kernel = c.kernel, .stride = c.stride, .padding = c.pad}; }

}  // namespace

TEST_SUITE("pool") {

TEST_CASE("max_pool2d on a known 4x4, by hand") {
  // 3  1  4 15
  // 5  9  2  6
  // 10 0 13  8
  // 12 7 11 14
  Tensor x = Tensor::from_vector({3, 1, 4, 15, 5, 9, 2, 6, 10, 0, 13, 8, 12, 7, 11, 14}, {1, 1, 4, 4});
  x.requires_grad_();

  SUBCASE("2x2 windows, stride 2 (stride 0 means the kernel size)") {
    const Tensor y = max_pool2d(x, {.kernel = 2});
    CHECK(y.shape() == Shape{1, 1, 2, 2});
    check_close(y, {9, 15, 12, 14});
    y.backward(Tensor::from_vector({1, 2, 3, 4}, {1, 1, 2, 2}));
    // Each gradient lands on its window's maximum: 9 at (1,1), 15 at (0,3), 12 at (3,0), 14 at (3,3).
    check_close(x.grad(), {0, 0, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 4});
  }
  SUBCASE("3x3 windows, stride 1, padding 1: overlapping windows add up") {
    const Tensor y = max_pool2d(x, {.kernel = 3, .stride = 1, .padding = 1});
    CHECK(y.shape() == Shape{1, 1, 4, 4});
    check_close(y, {9, 9, 15, 15, 10, 13, 15, 15, 12, 13, 14, 14, 12, 13, 14, 14});
    y.backward(Tensor::ones({1, 1, 4, 4}));
    // 15 wins four windows, 14 four, 13 three, 9 and 12 two each, 10 one.
    check_close(x.grad(), {0, 0, 0, 4, 0, 2, 0, 0, 1, 0, 3, 0, 2, 0, 0, 4});
  }
}

TEST_CASE("max_pool2d never selects the padding") {
  // All values negative: a zero pad would win every border window if it were selectable.
  std::vector<float> values(16);
  for (int i = 0; i < 16; ++i) values[i] = -static_cast<float>(i + 1);
  const Tensor x = Tensor::from_vector(values, {1, 1, 4, 4});
  check_close(max_pool2d(x, {.kernel = 3, .stride = 2, .padding = 1}), {-1, -2, -5, -6});
}

TEST_CASE("max_pool2d propagates NaN") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor x = Tensor::from_vector({1, nan, 3, 4}, {1, 1, 2, 2});
  CHECK(std::isnan(max_pool2d(x, {.kernel = 2}).item<float>()));
}

TEST_CASE("avg_pool2d on a known 4x4 ramp, by hand") {
  // x[h, w] = 4h + w.
  std::vector<float> ramp(16);
  for (int i = 0; i < 16; ++i) ramp[i] = static_cast<float>(i);
  Tensor x = Tensor::from_vector(ramp, {1, 1, 4, 4});
  x.requires_grad_();

  SUBCASE("2x2 windows: the mean of each window is 8p + 2q + 2.5") {
    const Tensor y = avg_pool2d(x, {.kernel = 2});
    check_close(y, {2.5f, 4.5f, 10.5f, 12.5f});
    y.backward(Tensor::from_vector({4, 8, 12, 16}, {1, 1, 2, 2}));
    check_close(x.grad(), {1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4});
  }
  SUBCASE("3x3 windows, stride 2, padding 1: padding counts as zeros in a divisor of 9") {
    // y[0,0] = (0 + 1 + 4 + 5) / 9, y[1,1] = (5+6+7 + 9+10+11 + 13+14+15) / 9 = 10.
    const Tensor y = avg_pool2d(x, {.kernel = 3, .stride = 2, .padding = 1});
    check_close(y, {10.0f / 9, 24.0f / 9, 51.0f / 9, 10.0f}, 1e-6, 1e-6);
    y.backward(Tensor::full({1, 1, 2, 2}, 9.0f));
    // Each input gets 1 per window that covers it (row 1 and column 1 are shared).
    check_close(x.grad(), {1, 2, 1, 1, 2, 4, 2, 2, 1, 2, 1, 1, 1, 2, 1, 1}, 1e-6, 1e-6);
  }
}

TEST_CASE("global_avg_pool2d averages each plane") {
  Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6, 10, 20, 30, 40, 50, 60}, {1, 2, 2, 3});
  x.requires_grad_();
  const Tensor y = global_avg_pool2d(x);
  CHECK(y.shape() == Shape{1, 2});
  check_close(y, {3.5f, 35.0f});
  y.backward(Tensor::from_vector({6, 12}, {1, 2}));
  check_close(x.grad(), {1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2});
}

TEST_CASE("pool kernels match direct loops") {
  Rng rng(4321);
  for (const PoolCase& c : kCases) {
    INFO(describe(c));
    const NaivePool ref(c);
    Tensor x = permuted_values({c.N, c.C, c.H, c.W}, 0.01f, rng);
    const Tensor dy = Tensor::uniform({c.N, c.C, ref.P, ref.Q}, -1.0f, 1.0f, rng);
    const std::vector<float> xv = x.to_vector<float>(), dyv = dy.to_vector<float>();
    x.requires_grad_();
    std::vector<float> y_ref, dx_ref;

    ref.max(xv, dyv, y_ref, dx_ref);
    const Tensor ym = max_pool2d(x, options_of(c));
    REQUIRE(ym.shape() == Shape{c.N, c.C, ref.P, ref.Q});
    check_close(ym, y_ref);
    ym.backward(dy);
    check_close(x.grad(), dx_ref, 1e-6, 1e-6);

    x.set_grad({});
    ref.avg(xv, dyv, y_ref, dx_ref);
    const Tensor ya = avg_pool2d(x, options_of(c));
    check_close(ya, y_ref, 1e-5, 1e-5);
    ya.backward(dy);
    check_close(x.grad(), dx_ref, 1e-5, 1e-5);
  }
}

TEST_CASE("pool gradients match finite differences") {
  Rng rng(11);
  SUBCASE("max_pool2d 2x2") {
    Tensor x = permuted_values({2, 2, 4, 6}, 0.1f, rng);
    x.requires_grad_();
    gradcheck([](const std::vector<Tensor>& in) { return max_pool2d(in[0], {.kernel = 2}); }, {x});
  }
  SUBCASE("max_pool2d 3x3 stride 2 padding 1") {
    Tensor x = permuted_values({2, 3, 5, 5}, 0.1f, rng);
    x.requires_grad_();
    gradcheck([](const std::vector<Tensor>& in) { return max_pool2d(in[0], {.kernel = 3, .stride = 2, .padding = 1}); },
              {x});
  }
  SUBCASE("avg_pool2d 3x3 stride 2 padding 1") {
    Tensor x = Tensor::uniform({2, 3, 5, 6}, -1.0f, 1.0f, rng);
    x.requires_grad_();
    gradcheck([](const std::vector<Tensor>& in) { return avg_pool2d(in[0], {.kernel = 3, .stride = 2, .padding = 1}); },
              {x});
  }
  SUBCASE("avg_pool2d 2x2 stride 1") {
    Tensor x = Tensor::uniform({1, 2, 4, 5}, -1.0f, 1.0f, rng);
    x.requires_grad_();
    gradcheck([](const std::vector<Tensor>& in) { return avg_pool2d(in[0], {.kernel = 2, .stride = 1}); }, {x});
  }
  SUBCASE("global_avg_pool2d") {
    Tensor x = Tensor::uniform({3, 4, 3, 5}, -1.0f, 1.0f, rng);
    x.requires_grad_();
    gradcheck([](const std::vector<Tensor>& in) { return global_avg_pool2d(in[0]); }, {x});
  }
}

TEST_CASE("pool CPU-vs-GPU parity") {
  testing::for_each_accelerator([](Device device) {
    Rng rng(55);
    auto compare = [&](const char* name, const Tensor& x_cpu, const std::function<Tensor(const Tensor&)>& op) {
      INFO(name << " on " << shape_str(x_cpu.shape()));
      Tensor x = x_cpu.clone();
      x.requires_grad_();
      const Tensor y = op(x);
      const Tensor dy = Tensor::uniform(y.shape(), -1.0f, 1.0f, rng);
      y.backward(dy);

      Tensor xd = x_cpu.to(device);
      xd.requires_grad_();
      const Tensor yd = op(xd);
      CHECK(yd.device() == device);
      yd.backward(dy.to(device));
      // 1e-4 absolute + relative: max pooling is exact, averages may sum in another order.
      check_close(yd, y, 1e-4, 1e-4);
      check_close(xd.grad(), x.grad(), 1e-4, 1e-4);
    };
    for (const PoolCase& c : kCases) {
      INFO(describe(c));
      const Tensor x = permuted_values({c.N, c.C, c.H, c.W}, 0.01f, rng);
      compare("max_pool2d", x, [&](const Tensor& t) { return max_pool2d(t, options_of(c)); });
      compare("avg_pool2d", x, [&](const Tensor& t) { return avg_pool2d(t, options_of(c)); });
      compare("global_avg_pool2d", x, [](const Tensor& t) { return global_avg_pool2d(t); });
    }
  });
}

TEST_CASE("pool rejects bad shapes with clear messages") {
  using doctest::Contains;
  const Tensor x = Tensor::zeros({2, 3, 5, 5});
  CHECK_THROWS_WITH_AS(max_pool2d(Tensor::zeros({3, 5, 5}), {.kernel = 2}),
                       Contains("max_pool2d: input must be 4-D (N, C, H, W), got shape [3, 5, 5]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(avg_pool2d(Tensor::zeros({2, 3, 5, 5, 1}), {.kernel = 2}),
                       Contains("avg_pool2d: input must be 4-D (N, C, H, W), got shape [2, 3, 5, 5, 1]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(global_avg_pool2d(Tensor::zeros({2, 3})),
                       Contains("global_avg_pool2d: input must be 4-D (N, C, H, W), got shape [2, 3]"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(max_pool2d(x, {.kernel = 7}),
                       Contains("max_pool2d: kernel 7x7 is larger than the padded input 5x5 (input shape [2, 3, 5, 5], "
                                "padding 0)"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(avg_pool2d(x, {.kernel = 3, .stride = 1, .padding = 2}),
                       Contains("avg_pool2d: padding must be between 0 and half the kernel (3), got 2"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(max_pool2d(x, {.kernel = 0}), Contains("kernel must be at least 1, got 0"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(max_pool2d(x, {.kernel = 2, .stride = -1}), Contains("stride must be at least 1"),
                       std::invalid_argument);
}

}  // TEST_SUITE

TEST_CASE("pool gradients match finite differences on the accelerator") {
  testing::for_each_accelerator([](Device device) {
    Rng rng(12);
    Tensor x = permuted_values({2, 3, 5, 5}, 0.1f, rng).to(device);
    x.requires_grad_();
    gradcheck([](const std::vector<Tensor>& in) { return max_pool2d(in[0], {.kernel = 3, .stride = 2, .padding = 1}); },
              {x});
    gradcheck([](const std::vector<Tensor>& in) { return avg_pool2d(in[0], {.kernel = 3, .stride = 2, .padding = 1}); },
              {x});
    gradcheck([](const std::vector<Tensor>& in) { return global_avg_pool2d(in[0]); }, {x});
  });
}
