#include "apps/bench/measure.h"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <vector>

#include "apps/common/checkpoint.h"
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

namespace polyak::bench {

namespace {

// Seconds of each of `windows` windows of `calls` calls of `call`.
template <class Call>
std::vector<double> window_seconds(Device device, int windows, int calls, Call&& call) {
  std::vector<double> seconds;
  for (int w = 0; w < windows; ++w) {
    const auto start = std::chrono::steady_clock::now();
    for (int c = 0; c < calls; ++c) call();
    backend(device).synchronize();  // a GPU runs asynchronously: time finished work
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return seconds;
}

// Items per second in each window.
std::vector<double> rates(const std::vector<double>& seconds, double items_per_window) {
  std::vector<double> out;
  for (const double s : seconds) out.push_back(items_per_window / s);
  return out;
}

// Microseconds per item in each window.
std::vector<double> microseconds_each(const std::vector<double>& seconds, double items_per_window) {
  std::vector<double> out;
  for (const double s : seconds) out.push_back(1e6 * s / items_per_window);
  return out;
}

int64_t peak_rss_kib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;  // KiB on Linux: the high-water mark of this process
}

}  // namespace

nlohmann::ordered_json measure_polyak(const Settings& s) {
  set_num_threads(s.threads);
  set_cuda_tf32(s.tf32);
  set_cuda_deterministic(s.deterministic);
  Rng rng(0);
  const auto model = models::create_model(s.model, 10, rng);
  model->to(s.device);
  model->pack_arenas();
  Sgd sgd(*model, {.lr = 0.01f, .momentum = 0.9f, .weight_decay = s.weight_decay, .nesterov = true});
  const Tensor images = Tensor::normal({s.batch, 3, 32, 32}, 0.0f, 1.0f, rng, s.device);
  std::vector<int64_t> label_values(s.batch);
  for (int64_t& l : label_values) l = static_cast<int64_t>(rng.below(10));
  const Tensor labels = Tensor::from_data(label_values.data(), {s.batch}, s.device);
  const double images_per_window = static_cast<double>(s.steps * s.batch);

  const auto train_step = [&] {
    model->zero_grad();
    const Tensor loss = cross_entropy((*model)(images), labels);
    loss.backward();
    sgd.step();
  };
  model->train();
  for (int i = 0; i < 2; ++i) train_step();  // warm-up: caches, allocator, page faults
  const auto train = window_seconds(s.device, s.windows, s.steps, train_step);

  model->eval();
  const auto eval_step = [&] {
    NoGradGuard no_grad;
    (void)(*model)(images);
  };
  eval_step();
  const auto eval = window_seconds(s.device, s.windows, s.steps, eval_step);

  // The five EMAs updated at every call (T = 1: the worst case); ten times as many
  // calls per window as steps, since one update is short.
  ema::EmaSet averages(*model, {});
  int64_t steps_taken = 0;
  const int ema_calls = s.steps * 10;
  const auto ema = window_seconds(s.device, s.windows, ema_calls, [&] {
    averages.after_step(++steps_taken * averages.options().every);
  });

  // Post-hoc EMA's tracking: the same five plus two power averages (sigma_rel 0.05 and
  // 0.10), all updated at every call in one pass; and one snapshot of the model, as
  // train --phema writes them (an atomic safetensors file).
  ema::EmaOptions with_power;
  with_power.every = 1;
  with_power.power_sigma_rels = {0.05f, 0.10f};
  ema::EmaSet power_averages(*model, with_power);
  int64_t power_steps = 0;
  const auto power = window_seconds(s.device, s.windows, ema_calls, [&] { power_averages.after_step(++power_steps); });
  const std::string snapshot = (std::filesystem::temp_directory_path() /
                                ("polyak_bench_snapshot_" + std::to_string(::getpid()) + ".safetensors")).string();
  const auto snapshots = window_seconds(s.device, s.windows, 1, [&] { app::save_model(snapshot, *model); });
  const auto snapshot_bytes = static_cast<int64_t>(std::filesystem::file_size(snapshot));
  std::filesystem::remove(snapshot);

  const auto recompute = window_seconds(s.device, s.windows, s.steps, [&] {
    bool given = false;
    ema::recompute_bn(*model, [&]() -> std::optional<Tensor> {
      if (given) return std::nullopt;
      given = true;
      return images;
    });
  });

  nlohmann::ordered_json out = {
      {"implementation", "polyak"},
      {"threads", s.threads},
      {"parameters", model->parameter_arena().numel()},
      {"train_images_per_s", rates(train, images_per_window)},
      {"eval_images_per_s", rates(eval, images_per_window)},
      {"ema_update_us", microseconds_each(ema, ema_calls)},
      {"bn_recompute_us_per_image", microseconds_each(recompute, images_per_window)},
      {"phema_update_us", microseconds_each(power, ema_calls)},
      {"snapshot_ms", microseconds_each(snapshots, 1000)},
      {"snapshot_bytes", snapshot_bytes},
      {"peak_rss_kib", peak_rss_kib()},
  };
  if (s.device == Device::CUDA) {
    const CudaMemoryStats memory = cuda_memory_stats();
    out["peak_device_mib"] = {{"in_use", static_cast<double>(memory.peak_in_use) / (1 << 20)},
                              {"reserved", static_cast<double>(memory.peak_reserved) / (1 << 20)}};
  }
  return out;
}

}  // namespace polyak::bench
