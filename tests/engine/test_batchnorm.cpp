// batch_norm: statistics and running-stat updates against hand-computed numbers, both
// momentum rules, eval mode, finite-difference gradients in both modes, CPU-vs-GPU
// parity and the argument checks.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <stdexcept>
#include <vector>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/cpu/moments.h"
#include "engine/ops.h"
#include "engine/parallel.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;
using polyak::testing::gradcheck;

namespace {

// (N=2, C=2, H=1, W=2). Channel 0 holds {1, 2, 3, 4}: mean 2.5, biased var 1.25,
// unbiased 5/3. Channel 1 holds {0, 0, 2, 6}: mean 2, biased var 6, unbiased 8.
Tensor known_batch() { return Tensor::from_vector({1, 2, 0, 0, 3, 4, 2, 6}, {2, 2, 1, 2}); }

Tensor counter(int64_t value) { return Tensor::from_data(&value, {}); }

}  // namespace

TEST_CASE("batchnorm train: batch statistics, affine output and momentum update") {
  const Tensor x = known_batch();
  const Tensor weight = Tensor::from_vector({2.0f, 0.5f}, {2});
  const Tensor bias = Tensor::from_vector({1.0f, -1.0f}, {2});
  Tensor running_mean = Tensor::zeros({2});
  Tensor running_var = Tensor::ones({2});
  Tensor tracked = counter(0);

  const Tensor y = batch_norm(x, weight, bias, running_mean, running_var, tracked, {});
  CHECK(y.shape() == Shape{2, 2, 1, 2});
  // xhat channel 0: (x - 2.5) / sqrt(1.25) = {-1.341641, -0.447214, 0.447214, 1.341641}
  // xhat channel 1: (x - 2) / sqrt(6)       = {-0.816497, -0.816497, 0, 1.632993}
  // y = 2 xhat + 1 on channel 0, 0.5 xhat - 1 on channel 1, in (n, c, w) order.
  check_close(y, {-1.683282f, 0.105573f, -1.408248f, -1.408248f, 1.894427f, 3.683282f, -1.0f, -0.183503f}, 1e-4);
  // r = 0.9 r + 0.1 stat, with the unbiased variance.
  check_close(running_mean, {0.25f, 0.2f}, 1e-6);
  check_close(running_var, {0.9f + 0.1f * 5.0f / 3.0f, 0.9f + 0.1f * 8.0f}, 1e-6);
  CHECK(tracked.item<int64_t>() == 1);

  // A second step moves them again from where they are.
  batch_norm(x, weight, bias, running_mean, running_var, tracked, {});
  check_close(running_mean, {0.9f * 0.25f + 0.25f, 0.9f * 0.2f + 0.2f}, 1e-6);
  CHECK(tracked.item<int64_t>() == 2);
}

TEST_CASE("batchnorm train: without affine parameters or running stats") {
  const Tensor y = batch_norm(known_batch(), {}, {}, {}, {}, {}, {});
  check_close(y, {-1.341641f, -0.447214f, -0.816497f, -0.816497f, 0.447214f, 1.341641f, 0.0f, 1.632993f}, 1e-4);

  // A 2-D (N, C) input: columns are channels. Column 0 = {1, 3}, column 1 = {2, 6}.
  const Tensor y2 = batch_norm(Tensor::from_vector({1, 2, 3, 6}, {2, 2}), {}, {}, {}, {}, {}, {.eps = 0.0f});
  check_close(y2, {-1.0f, -1.0f, 1.0f, 1.0f}, 1e-6);
}

TEST_CASE("batchnorm train: cumulative average (momentum nullopt) over three batches") {
  Rng rng(11);
  const int64_t N = 6, C = 3;
  Tensor running_mean = Tensor::full({C}, 5.0f);  // overwritten by the first batch (factor 1)
  Tensor running_var = Tensor::full({C}, -7.0f);
  Tensor tracked = counter(0);
  BatchNormOptions options;
  options.momentum = std::nullopt;

  std::vector<double> mean_of_means(C, 0.0), mean_of_vars(C, 0.0);
  for (int batch = 0; batch < 3; ++batch) {
    const Tensor x = Tensor::normal({N, C}, 1.0f + batch, 2.0f, rng);
    const std::vector<float> v = x.to_vector<float>();
    for (int64_t c = 0; c < C; ++c) {
      double m = 0, s = 0;
      for (int64_t n = 0; n < N; ++n) m += v[n * C + c];
      m /= N;
      for (int64_t n = 0; n < N; ++n) s += (v[n * C + c] - m) * (v[n * C + c] - m);
      mean_of_means[c] += m / 3.0;
      mean_of_vars[c] += s / (N - 1) / 3.0;
    }
    batch_norm(x, {}, {}, running_mean, running_var, tracked, options);
  }
  CHECK(tracked.item<int64_t>() == 3);
  check_close(running_mean, std::vector<float>(mean_of_means.begin(), mean_of_means.end()), 1e-5, 1e-5);
  check_close(running_var, std::vector<float>(mean_of_vars.begin(), mean_of_vars.end()), 1e-5, 1e-5);
}

TEST_CASE("batchnorm eval: running statistics, buffers untouched") {
  const Tensor x = known_batch();
  const Tensor weight = Tensor::from_vector({3.0f, 0.5f}, {2});
  const Tensor bias = Tensor::from_vector({1.0f, -1.0f}, {2});
  Tensor running_mean = Tensor::from_vector({1.0f, -1.0f}, {2});
  Tensor running_var = Tensor::from_vector({4.0f, 1.0f}, {2});
  Tensor tracked = counter(5);
  BatchNormOptions options;
  options.training = false;
  options.eps = 0.0f;
  const Tensor y = batch_norm(x, weight, bias, running_mean, running_var, tracked, options);
  // Channel 0: (x - 1) / 2 * 3 + 1; channel 1: (x + 1) / 1 * 0.5 - 1.
  check_close(y, {1.0f, 2.5f, -0.5f, -0.5f, 4.0f, 5.5f, 0.5f, 2.5f}, 1e-6);
  check_close(running_mean, {1.0f, -1.0f}, 0.0);
  check_close(running_var, {4.0f, 1.0f}, 0.0);
  CHECK(tracked.item<int64_t>() == 5);

  // Default eps = 1e-5 is inside the square root.
  options.eps = 1e-5f;
  const Tensor y_eps = batch_norm(x, {}, {}, running_mean, running_var, {}, options);
  const float s0 = 1.0f / std::sqrt(4.0f + 1e-5f), s1 = 1.0f / std::sqrt(1.0f + 1e-5f);
  check_close(y_eps, {0.0f, s0, s1, s1, 2 * s0, 3 * s0, 3 * s1, 7 * s1}, 1e-6);
}

TEST_CASE("batchnorm train gradcheck: 4-D and 2-D, with and without affine") {
  Rng rng(3);
  Tensor running_mean = Tensor::zeros({3});
  Tensor running_var = Tensor::ones({3});
  Tensor tracked = counter(0);
  SUBCASE("4-D affine") {
    const Tensor x = Tensor::normal({3, 3, 2, 2}, 0.5f, 1.5f, rng).requires_grad_();
    const Tensor w = Tensor::normal({3}, 1.0f, 0.5f, rng).requires_grad_();
    const Tensor b = Tensor::normal({3}, 0.0f, 0.5f, rng).requires_grad_();
    gradcheck([&](const std::vector<Tensor>& in) {
      return batch_norm(in[0], in[1], in[2], running_mean, running_var, tracked, {});
    }, {x, w, b});
  }
  SUBCASE("4-D without affine") {
    const Tensor x = Tensor::normal({2, 3, 3, 2}, -0.3f, 1.0f, rng).requires_grad_();
    gradcheck([&](const std::vector<Tensor>& in) {
      return batch_norm(in[0], {}, {}, running_mean, running_var, tracked, {});
    }, {x});
  }
  SUBCASE("2-D affine") {
    const Tensor x = Tensor::normal({8, 3}, 0.0f, 2.0f, rng).requires_grad_();
    const Tensor w = Tensor::normal({3}, 1.0f, 0.5f, rng).requires_grad_();
    const Tensor b = Tensor::normal({3}, 0.0f, 0.5f, rng).requires_grad_();
    gradcheck([&](const std::vector<Tensor>& in) {
      return batch_norm(in[0], in[1], in[2], running_mean, running_var, tracked, {});
    }, {x, w, b});
  }
  SUBCASE("2-D without affine or running stats") {
    const Tensor x = Tensor::normal({8, 3}, 1.0f, 1.0f, rng).requires_grad_();
    gradcheck([&](const std::vector<Tensor>& in) { return batch_norm(in[0], {}, {}, {}, {}, {}, {}); }, {x});
  }
  SUBCASE("only the affine parameters need a gradient") {
    const Tensor x = Tensor::normal({4, 3, 2, 2}, 0.0f, 1.0f, rng);
    const Tensor w = Tensor::normal({3}, 1.0f, 0.5f, rng).requires_grad_();
    const Tensor b = Tensor::normal({3}, 0.0f, 0.5f, rng).requires_grad_();
    gradcheck([&](const std::vector<Tensor>& in) {
      return batch_norm(in[0], in[1], in[2], running_mean, running_var, tracked, {});
    }, {x, w, b});
  }
}

TEST_CASE("batchnorm eval gradcheck") {
  Rng rng(4);
  const Tensor running_mean = Tensor::normal({3}, 0.0f, 1.0f, rng);
  const Tensor running_var = Tensor::uniform({3}, 0.5f, 2.0f, rng);
  BatchNormOptions options;
  options.training = false;
  SUBCASE("4-D affine") {
    const Tensor x = Tensor::normal({2, 3, 2, 3}, 0.0f, 1.0f, rng).requires_grad_();
    const Tensor w = Tensor::normal({3}, 1.0f, 0.5f, rng).requires_grad_();
    const Tensor b = Tensor::normal({3}, 0.0f, 0.5f, rng).requires_grad_();
    gradcheck([&](const std::vector<Tensor>& in) {
      return batch_norm(in[0], in[1], in[2], running_mean, running_var, {}, options);
    }, {x, w, b});
  }
  SUBCASE("2-D without affine") {
    const Tensor x = Tensor::normal({5, 3}, 0.0f, 1.0f, rng).requires_grad_();
    gradcheck([&](const std::vector<Tensor>& in) {
      return batch_norm(in[0], {}, {}, running_mean, running_var, {}, options);
    }, {x});
  }
}

TEST_CASE("batchnorm: no graph under NoGradGuard, running stats still move") {
  const Tensor x = known_batch();
  const Tensor w = Tensor::ones({2}).requires_grad_();
  Tensor running_mean = Tensor::zeros({2});
  Tensor running_var = Tensor::ones({2});
  NoGradGuard no_grad;
  const Tensor y = batch_norm(x, w, {}, running_mean, running_var, {}, {});
  CHECK_FALSE(y.requires_grad());
  check_close(running_mean, {0.25f, 0.2f}, 1e-6);
}

// The CPU sums a channel's deviations from a shift (the mean of its first row) in float
// lanes flushed to double: a large mean must not cancel the variance, and maps of 8x8
// (many short rows), 1x1 and a lone image must give the statistics of a double loop.
TEST_CASE("batchnorm train: statistics against a double loop, with a large mean and short rows") {
  Rng rng(31);
  struct Case {
    Shape shape;
    float mean, stddev;
  };
  // Summed over x, or combined from its planes' moments (as a convolution before the
  // BatchNorm computes them); 70x70 planes are longer than what those sum in float.
  for (const bool from_planes : {false, true})
    for (const Case& c : {Case{{64, 3, 8, 8}, 1.0e4f, 0.5f}, Case{{128, 5, 8, 8}, -3.0f, 2.0f},
                          Case{{300, 4}, 250.0f, 0.1f}, Case{{1, 2, 33, 31}, 0.0f, 1.0f},
                          Case{{3, 2, 70, 70}, 100.0f, 3.0f}}) {
      CAPTURE(shape_str(c.shape));
      CAPTURE(from_planes);
      const int64_t N = c.shape[0], C = c.shape[1], HW = c.shape.size() == 4 ? c.shape[2] * c.shape[3] : 1;
      const Tensor x = Tensor::normal(c.shape, c.mean, c.stddev, rng);
      Tensor running_mean = Tensor::zeros({C}), running_var = Tensor::zeros({C});
      BatchNormOptions options;
      options.momentum = 1.0f;  // the running statistics become this batch's
      Tensor moments;
      if (from_planes) {
        moments = Tensor::empty({N, C, kPlaneMoments});
        for (int64_t plane = 0; plane < N * C; ++plane)
          cpu::plane_moments(x.data<float>() + plane * HW, HW, moments.data<float>() + plane * kPlaneMoments);
      }
      const Tensor y = batch_norm(x, {}, {}, running_mean, running_var, {}, options, {}, moments);
      const std::vector<float> xv = x.to_vector<float>(), yv = y.to_vector<float>();
      const std::vector<float> mean = running_mean.to_vector<float>(), var = running_var.to_vector<float>();
      for (int64_t ch = 0; ch < C; ++ch) {
        double sum = 0.0, sq = 0.0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t s = 0; s < HW; ++s) sum += xv[(n * C + ch) * HW + s];
        const double m = sum / static_cast<double>(N * HW);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t s = 0; s < HW; ++s) sq += std::pow(xv[(n * C + ch) * HW + s] - m, 2);
        const double unbiased = sq / static_cast<double>(N * HW - 1);
        CHECK(mean[ch] == doctest::Approx(m).epsilon(1e-7));
        CHECK(var[ch] == doctest::Approx(unbiased).epsilon(1e-4));
        double y_sum = 0.0, y_sq = 0.0;  // the output: mean 0, biased variance 1 (up to eps)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t s = 0; s < HW; ++s) {
            const double v = yv[(n * C + ch) * HW + s];
            y_sum += v, y_sq += v * v;
          }
        const double ym = y_sum / static_cast<double>(N * HW), yvar = y_sq / static_cast<double>(N * HW) - ym * ym;
        CHECK(std::abs(ym) < 1e-3);
        CHECK(yvar == doctest::Approx(sq / static_cast<double>(N * HW) / (sq / static_cast<double>(N * HW) + 1e-5))
                          .epsilon(1e-3));
      }
    }
}

TEST_CASE("batchnorm: results do not depend on the thread count") {
  // Large enough for parallel_for to fork: one thread owns a channel, so the sums and
  // the outputs are bit-identical for any team size.
  Rng rng(13);
  const Tensor x = Tensor::normal({8, 16, 10, 10}, 0.5f, 2.0f, rng);
  const Tensor w = Tensor::normal({16}, 1.0f, 0.3f, rng);
  const Tensor dy = Tensor::normal({8, 16, 10, 10}, 0.0f, 1.0f, rng);
  const int saved = num_threads();
  std::vector<std::vector<float>> results;
  for (const int threads : {1, 3}) {
    set_num_threads(threads);
    const Tensor xg = x.clone().requires_grad_();
    Tensor rm = Tensor::zeros({16}), rv = Tensor::ones({16});
    const Tensor y = batch_norm(xg, w, {}, rm, rv, {}, {});
    y.backward(dy);
    std::vector<float> all = y.to_vector<float>();
    for (const Tensor& t : {xg.grad(), rm, rv}) {
      const std::vector<float> v = t.to_vector<float>();
      all.insert(all.end(), v.begin(), v.end());
    }
    results.push_back(all);
  }
  set_num_threads(saved);
  CHECK(results[0] == results[1]);
}

TEST_CASE("batchnorm parity: CPU vs accelerator") {
  polyak::testing::for_each_accelerator([](Device device) {
    Rng rng(21);
    const Tensor x = Tensor::normal({4, 5, 3, 3}, 0.3f, 1.7f, rng);
    const Tensor w = Tensor::normal({5}, 1.0f, 0.3f, rng);
    const Tensor b = Tensor::normal({5}, 0.0f, 0.3f, rng);
    const Tensor dy = Tensor::normal({4, 5, 3, 3}, 0.0f, 1.0f, rng);
    for (const bool training : {true, false}) {
      for (const bool cumulative : {false, true}) {
        CAPTURE(training);
        CAPTURE(cumulative);
        BatchNormOptions options;
        options.training = training;
        if (cumulative) options.momentum = std::nullopt;
        struct Result { Tensor y, dx, dw, db, rm, rv, tracked; };
        auto run = [&](Device dev) {
          Result r;
          // clone(): fresh leaves, so gradients do not accumulate across the loop
          // (to(CPU) of a CPU tensor returns the tensor itself).
          const Tensor xd = x.clone().to(dev).requires_grad_(), wd = w.clone().to(dev).requires_grad_(),
                       bd = b.clone().to(dev).requires_grad_();
          r.rm = Tensor::from_vector({0.1f, -0.2f, 0.3f, 0.0f, 0.5f}, {5}, dev);
          r.rv = Tensor::from_vector({1.0f, 0.5f, 2.0f, 1.5f, 0.8f}, {5}, dev);
          const int64_t start = 2;
          r.tracked = Tensor::from_data(&start, {}, dev);
          r.y = batch_norm(xd, wd, bd, r.rm, r.rv, r.tracked, options);
          r.y.backward(dy.to(dev));
          r.dx = xd.grad();
          r.dw = wd.grad();
          r.db = bd.grad();
          return r;
        };
        const Result cpu = run(Device::CPU), dev = run(device);
        check_close(dev.y.to(Device::CPU), cpu.y, 1e-5, 1e-4);
        check_close(dev.dx.to(Device::CPU), cpu.dx, 1e-5, 1e-4);
        check_close(dev.dw.to(Device::CPU), cpu.dw, 1e-4, 1e-4);
        check_close(dev.db.to(Device::CPU), cpu.db, 1e-4, 1e-4);
        check_close(dev.rm.to(Device::CPU), cpu.rm, 1e-6, 1e-5);
        check_close(dev.rv.to(Device::CPU), cpu.rv, 1e-6, 1e-5);
        CHECK(dev.tracked.item<int64_t>() == cpu.tracked.item<int64_t>());
      }
    }
    // (N, C) input, no affine, no running stats.
    const Tensor x2 = Tensor::normal({16, 7}, 0.0f, 1.0f, rng);
    check_close(batch_norm(x2.to(device), {}, {}, {}, {}, {}, {}).to(Device::CPU),
                batch_norm(x2, {}, {}, {}, {}, {}, {}), 1e-5, 1e-4);
  });
}

TEST_CASE("batchnorm: argument errors") {
  const Tensor x = known_batch();
  Tensor rm = Tensor::zeros({2}), rv = Tensor::ones({2});
  BatchNormOptions eval;
  eval.training = false;
  BatchNormOptions cumulative;
  cumulative.momentum = std::nullopt;
  CHECK_THROWS_AS(batch_norm(Tensor::zeros({2, 2, 2}), {}, {}, {}, {}, {}, {}), std::invalid_argument);
  CHECK_THROWS_AS(batch_norm(x, Tensor::ones({3}), {}, {}, {}, {}, {}), std::invalid_argument);
  CHECK_THROWS_AS(batch_norm(x, {}, Tensor::ones({2, 1}), {}, {}, {}, {}), std::invalid_argument);
  CHECK_THROWS_AS(batch_norm(x, {}, {}, Tensor::zeros({3}), rv, {}, {}), std::invalid_argument);
  CHECK_THROWS_AS(batch_norm(x, {}, {}, rm, {}, {}, {}), std::invalid_argument);
  CHECK_THROWS_AS(batch_norm(x, {}, {}, {}, {}, {}, eval), std::invalid_argument);
  CHECK_THROWS_WITH_AS(batch_norm(x, {}, {}, {}, {}, {}, {}, {}, Tensor::zeros({x.size(0), x.size(1), 2})),
                       doctest::Contains("plane_moments must be contiguous float32"), std::invalid_argument);
  CHECK_THROWS_AS(batch_norm(x, {}, {}, rm, rv, {}, cumulative), std::invalid_argument);
  CHECK_THROWS_AS(batch_norm(x, {}, {}, rm, rv, Tensor::zeros({1}), {}), std::invalid_argument);  // float counter
  CHECK_THROWS_AS(batch_norm(Tensor::ones({1, 2}), {}, {}, {}, {}, {}, {}), std::invalid_argument);
  CHECK_THROWS_WITH_AS(batch_norm(x, {}, {}, {}, {}, {}, {}, Tensor::zeros({2, 2, 2, 1})),
                       "batch_norm: the residual must be float32 [2, 2, 1, 2] on cpu like the input, got float32 "
                       "[2, 2, 2, 1] on cpu",
                       std::invalid_argument);
  // One value per channel is fine in evaluation.
  CHECK_NOTHROW(batch_norm(Tensor::ones({1, 2}), {}, {}, rm, rv, {}, eval));
}

namespace {

// Everything a fused batch_norm produces, for one set of inputs: the epilogue's
// results and the running statistics.
struct FusedRun : polyak::testing::EpilogueResults {
  Tensor rm, rv;
};

// relu(bn(x) + r) (each part optional) on `device`, fused or as separate ops, and its
// gradients for the upstream gradient dy. The inputs are cloned: fresh leaves per run.
FusedRun run_epilogue(bool fused, Device device, const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& r,
                      const Tensor& dy, bool training, bool relu_after) {
  FusedRun run;
  const Tensor xd = x.clone().to(device).requires_grad_(), wd = w.clone().to(device).requires_grad_(),
               bd = b.clone().to(device).requires_grad_();
  const Tensor rd = r.defined() ? r.clone().to(device).requires_grad_() : Tensor();
  const int64_t C = x.size(1);
  run.rm = Tensor::normal({C}, 0.0f, 0.2f, *std::make_unique<Rng>(5)).to(device);
  run.rv = Tensor::uniform({C}, 0.5f, 1.5f, *std::make_unique<Rng>(6)).to(device);
  BatchNormOptions options;
  options.training = training;
  if (fused) {
    options.relu = relu_after;
    run.y = batch_norm(xd, wd, bd, run.rm, run.rv, {}, options, rd);
  } else {
    run.y = batch_norm(xd, wd, bd, run.rm, run.rv, {}, options);
    if (rd.defined()) run.y = run.y + rd;
    if (relu_after) run.y = relu(run.y);
  }
  run.y.backward(dy.to(device));
  run.dx = xd.grad();
  run.dw = wd.grad();
  run.db = bd.grad();
  if (rd.defined()) run.dr = rd.grad();
  return run;
}

void check_runs_close(const FusedRun& got, const FusedRun& want, double tolerance) {
  polyak::testing::check_epilogue_results(got, want, tolerance);
  check_close(got.rm.to(Device::CPU), want.rm.to(Device::CPU), tolerance, tolerance);
  check_close(got.rv.to(Device::CPU), want.rv.to(Device::CPU), tolerance, tolerance);
}

}  // namespace

TEST_CASE("batchnorm fused epilogue: relu(bn(x) + residual) matches the separate ops") {
  Rng rng(31);
  // 4-D with rows long enough for the vector loops and their tails, and (N, C).
  for (const Shape& shape : {Shape{6, 3, 5, 7}, Shape{4, 5, 4, 4}, Shape{12, 6}}) {
    const Tensor x = Tensor::normal(shape, 0.4f, 1.3f, rng);
    const Tensor w = Tensor::normal({shape[1]}, 1.0f, 0.4f, rng), b = Tensor::normal({shape[1]}, 0.0f, 0.5f, rng);
    const Tensor r = Tensor::normal(shape, 0.0f, 1.0f, rng), dy = Tensor::normal(shape, 0.0f, 1.0f, rng);
    for (const bool training : {true, false})
      for (const bool with_residual : {false, true})
        for (const bool relu_after : {false, true}) {
          const std::string what = shape_str(shape) + (training ? " train" : " eval") +
                                   (with_residual ? " +residual" : "") + (relu_after ? " relu" : "");
          CAPTURE(what);
          const Tensor residual = with_residual ? r : Tensor();
          const FusedRun fused = run_epilogue(true, Device::CPU, x, w, b, residual, dy, training, relu_after);
          const FusedRun separate = run_epilogue(false, Device::CPU, x, w, b, residual, dy, training, relu_after);
          check_runs_close(fused, separate, 1e-5);
          if (relu_after) {  // the ReLU cut something, so the check above covers the mask
            const std::vector<float> y = fused.y.to_vector<float>();
            CHECK(std::count(y.begin(), y.end(), 0.0f) > 0);
          }
        }
  }
}

TEST_CASE("batchnorm train backward: in place of what nothing else sees, the same gradients; shared data untouched") {
  Rng rng(41);
  const Shape shape{4, 3, 5, 6};
  const Tensor x0 = Tensor::normal(shape, 0.3f, 1.2f, rng), r0 = Tensor::normal(shape, 0.0f, 1.0f, rng);
  const Tensor w0 = Tensor::normal({3}, 1.0f, 0.3f, rng), b0 = Tensor::normal({3}, 0.2f, 0.3f, rng);
  const Tensor dy = Tensor::normal(shape, 0.0f, 1.0f, rng);
  for (const bool relu : {false, true})
    for (const bool with_residual : {false, true}) {
      CAPTURE(relu);
      CAPTURE(with_residual);
      // The gradients of x, w, b and r through bn(1.5 x) with dy. Unless `shared`, the
      // BN's input (1.5 x) and its incoming gradient (that of a product by 1) are seen
      // by nothing else, and its backward writes dx and the masked gradient over them;
      // `shared` holds on to both, so the backward must leave them as they are.
      const auto gradients = [&](bool shared) {
        const Tensor x = x0.clone().requires_grad_(), r = r0.clone().requires_grad_();
        const Tensor w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
        Tensor input = x * 1.5f;
        const std::vector<float> input_values = input.to_vector<float>(), dy_values = dy.to_vector<float>();
        BatchNormOptions options;
        options.relu = relu;
        const Tensor y = batch_norm(input, w, b, {}, {}, {}, options, with_residual ? r : Tensor());
        if (shared) {
          y.backward(dy);  // dy is the test's
          CHECK(input.to_vector<float>() == input_values);
          CHECK(dy.to_vector<float>() == dy_values);
        } else {
          input = Tensor();
          (y * 1.0f).backward(dy);
        }
        std::vector<std::vector<float>> out{x.grad().to_vector<float>(), w.grad().to_vector<float>(),
                                            b.grad().to_vector<float>()};
        if (with_residual) out.push_back(r.grad().to_vector<float>());
        return out;
      };
      CHECK(gradients(false) == gradients(true));
    }
}

TEST_CASE("batchnorm fused epilogue gradcheck, training and evaluation") {
  Rng rng(37);
  const Tensor x = Tensor::normal({3, 2, 3, 3}, 0.2f, 1.0f, rng).requires_grad_();
  const Tensor w = Tensor::normal({2}, 1.0f, 0.3f, rng).requires_grad_();
  const Tensor b = Tensor::normal({2}, 0.3f, 0.3f, rng).requires_grad_();
  const Tensor r = Tensor::normal({3, 2, 3, 3}, 0.0f, 1.0f, rng).requires_grad_();
  const Tensor rm = Tensor::normal({2}, 0.0f, 0.3f, rng), rv = Tensor::uniform({2}, 0.5f, 2.0f, rng);
  for (const bool training : {true, false}) {
    CAPTURE(training);
    BatchNormOptions options;
    options.training = training;
    options.relu = true;
    gradcheck([&](const std::vector<Tensor>& in) { return batch_norm(in[0], in[1], in[2], rm, rv, {}, options, in[3]); },
              {x, w, b, r}, {.eps = 1e-3f});
    gradcheck([&](const std::vector<Tensor>& in) { return batch_norm(in[0], in[1], in[2], rm, rv, {}, options); },
              {x, w, b}, {.eps = 1e-3f});
  }
}

TEST_CASE("batchnorm fused epilogue parity: CPU vs accelerator") {
  polyak::testing::for_each_accelerator([](Device device) {
    Rng rng(41);
    for (const Shape& shape : {Shape{8, 4, 6, 5}, Shape{16, 7}}) {
      const Tensor x = Tensor::normal(shape, -0.2f, 1.1f, rng);
      const Tensor w = Tensor::normal({shape[1]}, 1.0f, 0.3f, rng), b = Tensor::normal({shape[1]}, 0.1f, 0.3f, rng);
      const Tensor r = Tensor::normal(shape, 0.0f, 1.0f, rng), dy = Tensor::normal(shape, 0.0f, 1.0f, rng);
      for (const bool training : {true, false})
        for (const bool with_residual : {false, true}) {
          const std::string what = shape_str(shape) + (training ? " train" : " eval") + (with_residual ? " +residual" : "");
          CAPTURE(what);
          const Tensor residual = with_residual ? r : Tensor();
          check_runs_close(run_epilogue(true, device, x, w, b, residual, dy, training, true),
                           run_epilogue(true, Device::CPU, x, w, b, residual, dy, training, true), 1e-4);
        }
    }
  });
}

TEST_CASE("batchnorm on the accelerator: large batches, a large mean, (N, C) input, the same bits twice") {
  polyak::testing::for_each_accelerator([](Device device) {
    Rng rng(22);
    struct Case {
      Shape shape;
      float mean, stddev;
    };
    // 64x16x16x16: M = 16384 values per channel, summed in many segments on the GPU;
    // mean 1000 with std 0.5: the variance must not cancel; (256, 24): HW = 1.
    for (const Case& c : {Case{{64, 16, 16, 16}, 0.5f, 2.0f}, Case{{32, 8, 8, 8}, 1000.0f, 0.5f},
                          Case{{256, 24}, -1.0f, 3.0f}}) {
      CAPTURE(shape_str(c.shape));
      const int64_t C = c.shape[1];
      const Tensor x = Tensor::normal(c.shape, c.mean, c.stddev, rng);
      const Tensor w = Tensor::normal({C}, 1.0f, 0.3f, rng), b = Tensor::normal({C}, 0.0f, 0.3f, rng);
      const Tensor dy = Tensor::normal(c.shape, 0.0f, 1.0f, rng);
      struct Result {
        std::vector<float> y, dx, dw, db, rm, rv;
      };
      auto run = [&](Device dev) {
        const Tensor xd = x.clone().to(dev).requires_grad_(), wd = w.clone().to(dev).requires_grad_(),
                     bd = b.clone().to(dev).requires_grad_();
        Tensor rm = Tensor::zeros({C}, DType::F32, dev), rv = Tensor::ones({C}, dev);
        const Tensor y = batch_norm(xd, wd, bd, rm, rv, {}, {});
        y.backward(dy.to(dev));
        return Result{y.to_vector<float>(),      xd.grad().to_vector<float>(), wd.grad().to_vector<float>(),
                      bd.grad().to_vector<float>(), rm.to_vector<float>(),       rv.to_vector<float>()};
      };
      const Result cpu = run(Device::CPU), gpu = run(device), again = run(device);
      const auto close = [](const std::vector<float>& got, const std::vector<float>& want, double atol, double rtol) {
        check_close(Tensor::from_vector(got, {static_cast<int64_t>(got.size())}), want, atol, rtol);
      };
      close(gpu.y, cpu.y, 1e-4, 1e-4);
      close(gpu.dx, cpu.dx, 1e-4, 1e-4);
      close(gpu.dw, cpu.dw, 1e-3, 1e-4);
      close(gpu.db, cpu.db, 1e-3, 1e-4);
      close(gpu.rm, cpu.rm, 1e-5, 1e-5);
      close(gpu.rv, cpu.rv, 1e-5, 1e-4);
      CHECK(gpu.y == again.y);
      CHECK(gpu.dx == again.dx);
      CHECK(gpu.dw == again.dw);
      CHECK(gpu.rv == again.rv);
    }
  });
}

TEST_CASE("batchnorm gradcheck on the accelerator, training and evaluation") {
  polyak::testing::for_each_accelerator([](Device device) {
    Rng rng(23);
    const Tensor x = Tensor::normal({3, 4, 2, 3}, 0.5f, 1.5f, rng).to(device).requires_grad_();
    const Tensor w = Tensor::normal({4}, 1.0f, 0.2f, rng).to(device).requires_grad_();
    const Tensor b = Tensor::normal({4}, 0.0f, 0.2f, rng).to(device).requires_grad_();
    gradcheck([](const std::vector<Tensor>& in) { return batch_norm(in[0], in[1], in[2], {}, {}, {}, {}); }, {x, w, b});
    const Tensor rm = Tensor::normal({4}, 0.0f, 0.3f, rng).to(device);
    const Tensor rv = Tensor::uniform({4}, 0.5f, 2.0f, rng).to(device);
    BatchNormOptions eval;
    eval.training = false;
    gradcheck([&](const std::vector<Tensor>& in) { return batch_norm(in[0], in[1], in[2], rm, rv, {}, eval); },
              {x, w, b});
  });
}
