// bench: throughput of the engine on a small conv net (TinyCnn) at a given batch size:
// training step (forward, backward, SGD update) and evaluation forward, in images/s,
// as the median of several timed windows after a warm-up. Random inputs: this
// measures compute, not data loading. Never run as a timed test.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim/sgd.h"
#include "engine/parallel.h"
#include "engine/rng.h"
#include "models/tiny_cnn.h"

using namespace polyak;

namespace {

// Median images/s over `windows` windows of `steps` calls of `step` each.
template <class Step>
double median_images_per_second(int windows, int steps, int64_t batch, Step&& step) {
  std::vector<double> rates;
  for (int w = 0; w < windows; ++w) {
    const auto start = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s) step();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    rates.push_back(static_cast<double>(steps * batch) / seconds);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"polyak bench: training and evaluation throughput of a small conv net"};
  int64_t batch = 128;
  int threads = num_threads(), windows = 5, steps = 5;
  app.add_option("--batch-size", batch, "images per step")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--threads", threads, "CPU threads")->capture_default_str()->check(CLI::Range(1, 256));
  app.add_option("--windows", windows, "timed windows (the median is reported)")->capture_default_str()->check(CLI::Range(1, 1000));
  app.add_option("--steps", steps, "steps per window")->capture_default_str()->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);

  Rng rng(0);
  models::TinyCnn model(10, rng);
  Sgd sgd(model.parameters(), {.lr = 0.01f, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true});
  const Tensor images = Tensor::normal({batch, 3, 32, 32}, 0.0f, 1.0f, rng);
  std::vector<int64_t> label_values(batch);
  for (int64_t& l : label_values) l = static_cast<int64_t>(rng.below(10));
  const Tensor labels = Tensor::from_data(label_values.data(), {batch});

  const auto train_step = [&] {
    sgd.zero_grad();
    const Tensor loss = cross_entropy(model.forward(images, true), labels);
    loss.backward();
    sgd.step();
  };
  const auto eval_step = [&] {
    NoGradGuard no_grad;
    (void)model.forward(images, false);
  };
  for (int i = 0; i < 3; ++i) train_step();  // warm-up: caches, allocator, page faults
  const double train_rate = median_images_per_second(windows, steps, batch, train_step);
  eval_step();
  const double eval_rate = median_images_per_second(windows, steps, batch, eval_step);
  // A training step costs about 3x the forward multiply-adds (forward, backward-data,
  // backward-filter); 2 FLOP per multiply-add.
  const double gflop_train = 3.0 * 2.0 * static_cast<double>(model.forward_macs_per_image()) * train_rate / 1e9;
  std::printf("model TinyCnn  batch %lld  threads %d\n", static_cast<long long>(batch), threads);
  std::printf("  train step (fwd+bwd+sgd): %8.0f images/s  (%.1f GFLOP/s)\n", train_rate, gflop_train);
  std::printf("  eval forward            : %8.0f images/s\n", eval_rate);
  return 0;
}
