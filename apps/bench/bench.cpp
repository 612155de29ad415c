// bench: throughput of the engine on a model of the zoo at a given batch size:
// training step (forward, backward, SGD update) and evaluation forward in images/s,
// the update of K = 5 EMAs in microseconds and as a share of a step, and a BN-recompute
// pass (train-mode forward without gradients) in microseconds per image; each the
// median of several timed windows after a warm-up. Random inputs: this measures
// compute, not data loading. Never run as a timed test.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <vector>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/cuda/settings.h"
#include "engine/nn/module.h"
#include "engine/ops.h"
#include "engine/optim/sgd.h"
#include "engine/parallel.h"
#include "engine/rng.h"
#include "ema/bn_recompute.h"
#include "ema/ema.h"
#include "models/registry.h"

using namespace polyak;

namespace {

// Median images/s over `windows` windows of `steps` calls of `step` each.
template <class Step>
double median_images_per_second(Device device, int windows, int steps, int64_t batch, Step&& step) {
  std::vector<double> rates;
  for (int w = 0; w < windows; ++w) {
    const auto start = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s) step();
    backend(device).synchronize();  // a GPU runs asynchronously: time finished work
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    rates.push_back(static_cast<double>(steps * batch) / seconds);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"polyak bench: training and evaluation throughput"};
  std::string model_name = "resnet20";
  int64_t batch = 128;
  int threads = num_threads(), windows = 5, steps = 5;
  app.add_option("--model", model_name, "model name")->capture_default_str()->check(CLI::IsMember(models::model_names()));
  app.add_option("--batch-size", batch, "images per step")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--threads", threads, "CPU threads")->capture_default_str()->check(CLI::Range(1, 256));
  app.add_option("--windows", windows, "timed windows (the median is reported)")->capture_default_str()->check(CLI::Range(1, 1000));
  app.add_option("--steps", steps, "steps per window")->capture_default_str()->check(CLI::Range(1, 1000));
  std::string device_name = "cpu";
  app.add_option("--device", device_name, "cpu or cuda")->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  bool tf32 = false, deterministic = false;
  app.add_flag("--tf32", tf32, "GPU: TF32 tensor-core math (default: exact FP32)");
  app.add_flag("--deterministic", deterministic, "GPU: only deterministic cuDNN algorithms");
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);
  set_cuda_tf32(tf32);
  set_cuda_deterministic(deterministic);
  const Device device = device_name == "cuda" ? Device::CUDA : Device::CPU;
  if (!device_available(device)) {
    std::fprintf(stderr, "bench: --device %s: not available in this build or on this machine\n", device_name.c_str());
    return 2;
  }

  Rng rng(0);
  const auto model = models::create_model(model_name, 10, rng);
  model->to(device);
  model->pack_arenas();
  Sgd sgd(*model, {.lr = 0.01f, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true});
  const Tensor images = Tensor::normal({batch, 3, 32, 32}, 0.0f, 1.0f, rng, device);
  std::vector<int64_t> label_values(batch);
  for (int64_t& l : label_values) l = static_cast<int64_t>(rng.below(10));
  const Tensor labels = Tensor::from_data(label_values.data(), {batch}, device);

  const auto train_step = [&] {
    model->zero_grad();
    const Tensor loss = cross_entropy((*model)(images), labels);
    loss.backward();
    sgd.step();
  };
  const auto eval_step = [&] {
    NoGradGuard no_grad;
    (void)(*model)(images);
  };
  model->train();
  for (int i = 0; i < 2; ++i) train_step();  // warm-up: caches, allocator, page faults
  const double train_rate = median_images_per_second(device, windows, steps, batch, train_step);
  model->eval();
  eval_step();
  const double eval_rate = median_images_per_second(device, windows, steps, batch, eval_step);
  // The five EMAs updated every step (T = 1: the worst case), and a BN-recompute pass.
  ema::EmaSet averages(*model, {});
  int64_t t = 0;
  const double ema_updates_per_second = median_images_per_second(device, windows, steps * 10, 1, [&] {
    averages.after_step(++t * averages.options().every);
  });
  const double ema_us = 1e6 / ema_updates_per_second;
  const double step_us = 1e6 * static_cast<double>(batch) / train_rate;
  const double recompute_rate = median_images_per_second(device, windows, steps, batch, [&] {
    bool given = false;
    ema::recompute_bn(*model, [&]() -> std::optional<Tensor> {
      if (given) return std::nullopt;
      given = true;
      return images;
    });
  });

  std::printf("model %s  batch %lld  device %s  threads %d  parameters %lld\n", model_name.c_str(),
              static_cast<long long>(batch), device_name.c_str(), threads,
              static_cast<long long>(model->parameter_arena().numel()));
  std::printf("  train step (fwd+bwd+sgd): %8.0f images/s\n", train_rate);
  std::printf("  eval forward            : %8.0f images/s\n", eval_rate);
  std::printf("  5-EMA update            : %8.0f us  (%.2f%% of a training step of %.0f us)\n", ema_us,
              100.0 * ema_us / step_us, step_us);
  std::printf("  BN recompute pass       : %8.1f us per image  (%.0f images/s)\n", 1e6 / recompute_rate, recompute_rate);
  if (device == Device::CUDA) {
    const CudaMemoryStats memory = cuda_memory_stats();
    std::printf("  peak device memory      : %8.1f MiB in use, %.1f MiB reserved (%s%s)\n",
                static_cast<double>(memory.peak_in_use) / (1 << 20), static_cast<double>(memory.peak_reserved) / (1 << 20),
                tf32 ? "TF32" : "FP32", deterministic ? ", deterministic" : "");
  }
  return 0;
}
