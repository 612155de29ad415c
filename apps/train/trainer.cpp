#include "apps/train/trainer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>

#include "apps/common/checkpoint.h"
#include "apps/common/datasets.h"
#include "apps/common/evaluate.h"
#include "apps/common/progress.h"
#include "apps/report/report.h"
#include "apps/train/protocol.h"
#include "apps/train/resume.h"
#include "engine/backend.h"
#include "engine/cuda/settings.h"
#include "engine/host_memory.h"
#include "engine/io/atomic_file.h"
#include "data/labels.h"
#include "data/loader.h"
#include "data/split.h"
#include "engine/ops.h"
#include "engine/optim/schedule.h"
#include "engine/parallel.h"
#include "models/registry.h"

namespace polyak::app {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The labels training sees when they are not the dataset's own (--labels, or
// --label-noise), with the clean ones; the set itself is left as it is.
std::optional<data::NoisyLabels> noisy_labels(const TrainConfig& config, const data::ImageSet& train) {
  if (!config.labels_file.empty())
    return data::NoisyLabels{data::read_label_file(config.labels_file, train.count, train.num_classes), train.labels};
  if (config.label_noise <= 0) return std::nullopt;
  if (config.noise_type == "sym")
    return data::symmetric_noise(train.labels, train.num_classes, config.label_noise, config.seed);
  return data::asymmetric_noise(train.labels, data::asymmetric_map(train.num_classes), config.label_noise, config.seed);
}

int64_t argmax_matches(const Tensor& logits, const Tensor& labels) {
  const std::vector<float> l = logits.to_vector<float>();
  const std::vector<int64_t> y = labels.to_vector<int64_t>();
  const int64_t classes = logits.size(1);
  int64_t correct = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const float* row = l.data() + static_cast<int64_t>(i) * classes;
    correct += std::max_element(row, row + classes) - row == y[i];
  }
  return correct;
}

// Whether every value of the flat float tensor `t` is finite. On the CPU one scan; on a
// GPU one reduction without a copy to the host: x * 0 is 0 for a finite x and NaN for
// an infinite or NaN one, so the sum is NaN exactly when some value is not finite (and,
// unlike a plain sum of the values, it cannot overflow).
bool all_finite(const Tensor& t) {
  if (t.device() == Device::CPU) {
    const float* v = t.data<float>();
    return std::all_of(v, v + t.numel(), [](float x) { return std::isfinite(x); });
  }
  return std::isfinite(sum(mul_scalar(t, 0.0f)).item());
}

// The first parameter (PyTorch's order and name) whose values, or gradient values, are
// not all finite; "" when there is none.
std::string first_nonfinite(const nn::Module& model, bool gradients) {
  if (all_finite(gradients ? model.gradient_arena() : model.parameter_arena())) return "";
  for (const auto& [name, p] : model.named_parameters())
    if (!all_finite((gradients ? p.grad() : p).contiguous())) return name;
  return "?";
}

// What is not finite in the step just computed ("" when all is well): the loss, or a
// gradient.
std::string nonfinite_part(float loss, const nn::Module& model) {
  if (!std::isfinite(loss)) return "the loss is " + number_str(loss);
  const std::string name = first_nonfinite(model, true);
  return name.empty() ? "" : "the gradient of " + name + " is not finite";
}

// The model's buffers (BatchNorm statistics and counters), kept before a step that may
// be skipped: the forward pass of a batch whose loss is not finite may already have
// made them NaN.
std::vector<Tensor> copy_buffers(const nn::Module& model) {
  std::vector<Tensor> copies;
  for (const auto& [name, b] : model.named_buffers()) copies.push_back(b.clone());
  return copies;
}

void restore_buffers(const nn::Module& model, const std::vector<Tensor>& copies) {
  size_t i = 0;
  for (const auto& [name, b] : model.named_buffers()) Tensor(b).copy_(copies.at(i++));
}

// The process's memory at the end of an epoch's steps, for the train row: a measurement
// of this process, not a result (a resumed run's rows differ here and only here).
json memory_json(const HostMemory& m) {
  const auto mib = [](double x) { return std::round(x * 10) / 10; };
  return {{"rss_mib", mib(m.rss_mib)}, {"peak_rss_mib", mib(m.peak_rss_mib)}, {"live_heap_mib", mib(m.live_heap_mib())},
          {"malloc_mib", mib(m.malloc_mib)}, {"tensor_mib", mib(m.tensor_mib)}};
}

// Test hook: with POLYAK_FAULT_STOP_AT_STEP=N the process stops itself (SIGSTOP) right
// after optimiser step N, before anything of that step is saved, so that a test can
// kill it (SIGKILL) at exactly that point; see tests/apps/test_crash_resume.cpp.
void fault_stop_at(int64_t step) {
  static const int64_t stop_at = [] {
    const char* value = std::getenv("POLYAK_FAULT_STOP_AT_STEP");
    return value ? std::atoll(value) : 0;
  }();
  if (step == stop_at) std::raise(SIGSTOP);
}

}  // namespace

int run_training(TrainConfig config) {
  std::optional<io::SafetensorsFile> checkpoint;
  if (!config.resume.empty()) {
    checkpoint = read_resumed_checkpoint(config.resume);
    config = resumed_config(config, *checkpoint);
  }
  config.resolve();
  config.validate();
  if (config.threads) set_num_threads(config.threads);
  const auto run_start = std::chrono::steady_clock::now();

  // ---- output folder: checked before any work, so a bad path fails at once ----
  const fs::path out_dir(config.output);
  prepare_output_folder("--output", config.output);
  for (const std::string& name : io::remove_stale_temp_files(config.output))
    std::printf("removed %s, left by an interrupted write\n", (out_dir / name).string().c_str());
  const fs::path last_path = out_dir / "last.safetensors";
  if (config.resume.empty() && fs::exists(last_path))
    throw std::invalid_argument("--output " + config.output + " already holds a run (" + last_path.string() +
                                "); pass --resume " + last_path.string() + " to continue it, or choose another --output");

  // ---- data ----
  Datasets sets = load_datasets(config.dataset, config.data_dir);
  keep_first(sets.train, config.train_subset);
  keep_first(sets.test, config.test_subset);
  const int classes = sets.train.num_classes;
  // Noisy labels are for training only: the split is drawn on the clean labels (so that
  // eval reproduces it from the seed alone) and the validation images keep them, so
  // that selection and temperature scaling are judged on clean held-out data.
  const std::optional<data::NoisyLabels> noise = noisy_labels(config, sets.train);
  const data::Split split = data::train_val_split(sets.train.labels, classes, config.val_split, config.seed);
  if (noise) {
    for (const int64_t i : split.train) sets.train.labels[static_cast<size_t>(i)] = noise->labels[static_cast<size_t>(i)];
    int64_t wrong = 0;
    for (const int64_t i : split.train) wrong += noise->is_noisy(i);
    std::printf("labels: %s, %.2f%% of the %zu training images wrong; validation labels clean\n",
                config.labels_file.empty() ? (config.noise_type + " noise").c_str() : config.labels_file.c_str(),
                100.0 * static_cast<double>(wrong) / static_cast<double>(std::max<size_t>(split.train.size(), 1)),
                split.train.size());
  }
  if (config.batch_size > static_cast<int64_t>(split.train.size()))
    throw std::invalid_argument("--batch-size " + std::to_string(config.batch_size) + ": larger than the " +
                                std::to_string(split.train.size()) + " training images");

  // ---- model, optimiser, schedule ----
  const Device device = device_from_flag(config.device);
  set_cuda_tf32(config.tf32);
  set_cuda_deterministic(config.deterministic);
  Rng rng(config.seed);
  const auto model = models::create_model(config.model, classes, rng);
  model->to(device);
  model->pack_arenas();
  if (!config.init.empty()) {
    try {
      load_model(config.init, *model, config.model);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("--init ") + e.what());
    }
  }
  Sgd sgd(*model, {.lr = config.lr, .momentum = config.momentum, .weight_decay = config.weight_decay, .nesterov = config.nesterov});
  data::LoaderOptions loader_options;
  loader_options.batch_size = config.batch_size;
  loader_options.shuffle = config.shuffle;
  loader_options.augment = config.augment;
  loader_options.seed = config.seed;
  loader_options.device = device;
  data::Loader loader(sets.train, split.train, loader_options);
  const int64_t steps_per_epoch = loader.batches_per_epoch();
  Schedule schedule;
  schedule.kind = parse_schedule_kind(config.sched);
  schedule.base_lr = config.lr;
  schedule.warmup_steps = std::lround(config.warmup_epochs * static_cast<double>(steps_per_epoch));
  schedule.total_steps = config.epochs * steps_per_epoch;
  schedule.gamma = config.gamma;
  for (int m : config.milestones) schedule.milestone_steps.push_back(m * steps_per_epoch);

  // ---- averaging and the evaluation protocol ----
  std::optional<ema::EmaSet> averages;
  if (const auto options = config.ema_options(schedule.total_steps)) averages.emplace(*model, *options);
  Protocol protocol(config, *model, averages ? &*averages : nullptr, sets, split, out_dir, noise ? &*noise : nullptr);

  MetricsLog metrics(out_dir / "metrics.jsonl");
  TrainingState state;
  std::string saved_path;  // the last good checkpoint, and its step
  int64_t saved_step = 0;
  if (checkpoint) {
    Resumed resumed = restore_run(*checkpoint, config, steps_per_epoch, *model, sgd, averages ? &*averages : nullptr);
    state = resumed.state;
    protocol.set_selection(std::move(resumed.selection));
    saved_path = config.resume;
    saved_step = state.step;
    rng.set_state(state.rng);
    metrics.keep_through_epoch(state.epoch);
    std::printf("resumed %s at epoch %lld, step %lld\n", config.resume.c_str(), static_cast<long long>(state.epoch),
                static_cast<long long>(state.step));
    checkpoint.reset();  // all of it is restored: its memory goes back before training
  } else {
    io::write_file_atomically((out_dir / "config.json").string(), config.to_json() + "\n");
    metrics.start_fresh();
    save_model((out_dir / "init.safetensors").string(), *model, {{"polyak.model", config.model}});
    state.loader = loader.state();
  }
  state.config_json = config.definition().to_json();
  loader.set_state(state.loader);

  if (averages) {
    std::printf("averaging: %zu EMAs (", averages->size());
    for (size_t k = 0; k < averages->size(); ++k) std::printf("%s%s", k ? ", " : "", averages->name(k).c_str());
    std::printf(") every %lld steps, warm-up %s, buffers %s, BN recompute %s\n",
                static_cast<long long>(averages->options().every), averages->options().warmup ? "on" : "off",
                ema::buffer_policy_name(averages->options().buffers), config.bn_recompute.c_str());
  }
  std::printf("train: %s on %s (%lld train / %zu val / %lld test images), %lld parameters, batch %lld, %d epochs, "
              "%s lr %.3g, %d threads -> %s\n",
              config.model.c_str(), config.dataset.c_str(), static_cast<long long>(split.train.size()), split.val.size(),
              static_cast<long long>(sets.test.count), static_cast<long long>(model->parameter_arena().numel()),
              static_cast<long long>(config.batch_size), config.epochs, config.sched.c_str(), config.lr, num_threads(),
              config.output.c_str());

  // The error of a run stopped at `step` by a non-finite `what`.
  const auto diverged = [&](int64_t step, const std::string& what, int64_t epoch, float lr) {
    return TrainingDiverged(
        "training diverged at step " + std::to_string(step) + " (epoch " + std::to_string(epoch + 1) + ", lr " +
        number_str(lr) + "): " + what + "; stopped without saving; the last good checkpoint is " +
        (saved_path.empty() ? std::string("none (none was written yet)")
                            : saved_path + " (step " + std::to_string(saved_step) + ")"));
  };
  // The checkpoint of where the run stands: after epoch state.epoch, or inside the
  // next one with the loader's position and the epoch's running sums.
  const auto save_checkpoint = [&] {
    state.loader = loader.state();
    state.rng = rng.state();
    std::map<std::string, std::string> extra_metadata = {{"polyak.selection", protocol.selection().dump()}};
    if (averages) extra_metadata.merge(averages->state_metadata());
    save_training_checkpoint(last_path.string(), *model, sgd, state,
                             averages ? averages->state_tensors() : std::vector<nn::NamedTensor>{}, extra_metadata);
    saved_path = last_path.string();
    saved_step = state.step;
  };

  bool stopped = false;
  while (!stopped && loader.state().epoch < config.epochs) {
    const int64_t epoch = loader.state().epoch;
    model->train();
    ProgressBar bar("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(config.epochs),
                    steps_per_epoch - loader.state().next_batch, config.batch_size);
    // A run resumed inside an epoch continues that epoch's sums.
    if (loader.state().next_batch == 0) {
      state.epoch_loss_sum = 0;
      state.epoch_correct = state.epoch_seen = state.epoch_skipped = 0;
    }
    int64_t done = 0;
    float lr = schedule.lr_at(state.step);
    while (auto batch = loader.next()) {
      lr = schedule.lr_at(state.step);
      sgd.options().lr = lr;
      model->zero_grad();
      std::vector<Tensor> buffers_before;
      if (config.on_nonfinite == "skip") buffers_before = copy_buffers(*model);
      const Tensor logits = (*model)(batch->images);
      const Tensor loss = cross_entropy(logits, batch->labels);
      const float loss_value = loss.item();
      if (std::isfinite(loss_value)) loss.backward();
      if (const std::string bad = nonfinite_part(loss_value, *model); !bad.empty()) {
        if (config.on_nonfinite == "stop") throw diverged(state.step + 1, bad, epoch, lr);
        if (++state.consecutive_skips > config.max_skips)
          throw diverged(state.step + 1, bad + ", " + std::to_string(config.max_skips) + " steps in a row (--max-skips)",
                         epoch, lr);
        // Skipped: no update of the weights, the momentum or the averages, and the BN
        // statistics as before the batch. The step still counts (the batch is used up,
        // and the schedule stays on the epochs' grid), and the epoch's loss and accuracy
        // leave the batch out.
        restore_buffers(*model, buffers_before);
        std::printf("warning: step %lld (epoch %lld, lr %s) skipped: %s (%lld in a row)\n",
                    static_cast<long long>(state.step + 1), static_cast<long long>(epoch + 1), number_str(lr).c_str(),
                    bad.c_str(), static_cast<long long>(state.consecutive_skips));
        ++state.epoch_skipped;
        ++state.step;
      } else {
        state.consecutive_skips = 0;
        sgd.step();
        // A finite loss and gradient can still step to weights that overflow; that
        // cannot be skipped (the old weights are gone), so it always stops the run.
        if (const std::string name = first_nonfinite(*model, false); !name.empty())
          throw diverged(state.step + 1, "the update made " + name + " non-finite", epoch, lr);
        ++state.step;
        if (averages) averages->after_step(state.step);
        const int64_t b = batch->labels.numel();
        state.epoch_loss_sum += static_cast<double>(loss_value) * static_cast<double>(b);
        state.epoch_correct += argmax_matches(logits, batch->labels);
        state.epoch_seen += b;
      }
      const double seen = static_cast<double>(std::max<int64_t>(state.epoch_seen, 1));
      bar.update(++done, state.epoch_loss_sum / seen, 100.0 * static_cast<double>(state.epoch_correct) / seen);
      fault_stop_at(state.step);
      if (config.max_steps && state.step >= config.max_steps) {
        stopped = true;
        break;
      }
      // Mid-epoch checkpoints; the one of the epoch's last batch follows its evaluation.
      if (config.save_every && state.step % config.save_every == 0 && loader.state().next_batch < steps_per_epoch)
        save_checkpoint();
    }
    const double rate = bar.finish();
    if (loader.state().next_batch >= steps_per_epoch) loader.start_epoch(epoch + 1);  // stopped on the last batch
    if (loader.state().epoch == epoch + 1) {
      state.epoch = epoch + 1;
      const double seen = static_cast<double>(state.epoch_seen);
      const double accuracy = seen > 0 ? 100.0 * static_cast<double>(state.epoch_correct) / seen : 0.0;
      const double loss = seen > 0 ? state.epoch_loss_sum / seen : 0.0;
      const json base = {{"epoch", state.epoch}, {"step", state.step}, {"lr", lr}, {"model", "sgd"}, {"bn", "running"}};
      json train_row = base;
      train_row.update({{"split", "train"}, {"accuracy", accuracy}, {"loss", loss}, {"images", state.epoch_seen},
                        {"skipped", state.epoch_skipped}, {"memory", memory_json(host_memory())}});
      metrics.append(train_row);
      std::string summary = "epoch " + std::to_string(state.epoch) + "/" + std::to_string(config.epochs);
      char buf[160];
      std::snprintf(buf, sizeof buf, "  lr %.4f  train loss %.3f acc %.2f%%", lr, loss, accuracy);
      summary += buf;
      if (state.epoch_skipped) summary += "  (" + std::to_string(state.epoch_skipped) + " steps skipped)";
      if (state.epoch % config.eval_every == 0 || state.epoch == config.epochs)
        summary += protocol.evaluate_epoch(state.epoch, state.step, lr, metrics);
      std::snprintf(buf, sizeof buf, "  (%.0f img/s, %s)", rate, format_duration(bar.seconds()).c_str());
      std::printf("%s%s\n", summary.c_str(), buf);
      state.epoch_loss_sum = 0;
      state.epoch_correct = state.epoch_seen = state.epoch_skipped = 0;
    }
    save_checkpoint();
  }
  if (state.epoch >= config.epochs) {
    save_model((out_dir / "model.safetensors").string(), *model, {{"polyak.model", config.model}});
    protocol.finish(state.epoch, state.step, schedule.lr_at(state.step - 1), metrics);
    const fs::path report = out_dir / "report.html";
    write_report({out_dir.string()}, report.string());
    std::printf("report: %s\n", report.string().c_str());
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  std::printf("done in %s: %s\n", format_duration(total).c_str(), out_dir.string().c_str());
  return 0;
}

}  // namespace polyak::app
