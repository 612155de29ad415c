#include "apps/train/trainer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
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
#include "engine/backend.h"
#include "engine/cuda/settings.h"
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

// The configuration a --resume continues: the checkpoint's, with only the settings
// that do not change the result taken from the command line.
TrainConfig resumed_config(const TrainConfig& given) {
  const io::SafetensorsFile file = io::load_safetensors(given.resume);
  const auto it = file.metadata.find("polyak.config");
  if (it == file.metadata.end())
    throw std::invalid_argument("--resume " + given.resume + ": not a training checkpoint (no run configuration)");
  TrainConfig config = TrainConfig::from_json(it->second);
  config.resume = given.resume;
  if (given.threads) config.threads = given.threads;
  config.max_steps = given.max_steps;
  config.output = given.output.empty() ? fs::path(given.resume).parent_path().string() : given.output;
  if (config.output.empty()) config.output = ".";
  return config;
}

// Keeps the first n images of `set` (all when n is 0 or not smaller than the set).
void keep_first(data::ImageSet& set, int64_t n) {
  if (n <= 0 || n >= set.count) return;
  std::vector<int64_t> first(static_cast<size_t>(n));
  std::iota(first.begin(), first.end(), 0);
  set = data::subset(set, first);
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

}  // namespace

int run_training(TrainConfig config) {
  if (!config.resume.empty()) config = resumed_config(config);
  config.resolve();
  config.validate();
  if (config.threads) set_num_threads(config.threads);
  const auto run_start = std::chrono::steady_clock::now();

  // ---- output folder: checked before any work, so a bad path fails at once ----
  const fs::path out_dir(config.output);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw std::invalid_argument("--output " + config.output + ": cannot create the folder: " + ec.message());
  const fs::path last_path = out_dir / "last.safetensors";
  if (config.resume.empty() && fs::exists(last_path))
    throw std::invalid_argument("--output " + config.output + " already holds a run (" + last_path.string() +
                                "); pass --resume " + last_path.string() + " to continue it, or choose another --output");

  // ---- data ----
  Datasets sets = load_datasets(config.dataset, config.data_dir);
  keep_first(sets.train, config.train_subset);
  keep_first(sets.test, config.test_subset);
  const int classes = sets.train.num_classes;
  if (!config.labels_file.empty()) {
    const data::NoisyLabels labels = data::load_label_file(sets.train, config.labels_file);
    std::printf("labels: %s (%.2f%% differ from the official ones)\n", config.labels_file.c_str(), 100 * labels.noise_rate());
  } else if (config.label_noise > 0) {
    const data::NoisyLabels noisy =
        config.noise_type == "sym"
            ? data::symmetric_noise(sets.train.labels, classes, config.label_noise, config.seed)
            : data::asymmetric_noise(sets.train.labels, data::asymmetric_map(classes), config.label_noise, config.seed);
    data::apply_labels(sets.train, noisy);
    std::printf("labels: %s noise, %.2f%% of training labels changed\n", config.noise_type.c_str(), 100 * noisy.noise_rate());
  }
  const data::Split split = data::train_val_split(sets.train.labels, classes, config.val_split, config.seed);
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
  if (!config.init.empty()) load_model(config.init, *model);
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
  Protocol protocol(config, *model, averages ? &*averages : nullptr, sets, split, out_dir);

  MetricsLog metrics(out_dir / "metrics.jsonl");
  TrainingState state;
  if (!config.resume.empty()) {
    io::SafetensorsFile file;
    state = load_training_checkpoint(config.resume, *model, sgd, &file);
    if (averages) {
      std::vector<nn::NamedTensor> tensors(file.tensors.begin(), file.tensors.end());
      averages->load_state(tensors, file.metadata);
    }
    if (file.metadata.count("polyak.selection"))
      protocol.set_selection(json::parse(file.metadata.at("polyak.selection")));
    rng.set_state(state.rng);
    metrics.keep_through_epoch(state.epoch);
    std::printf("resumed %s at epoch %lld, step %lld\n", config.resume.c_str(), static_cast<long long>(state.epoch),
                static_cast<long long>(state.step));
  } else {
    write_file_atomically(out_dir / "config.json", config.to_json() + "\n");
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

  bool stopped = false;
  while (!stopped && loader.state().epoch < config.epochs) {
    const int64_t epoch = loader.state().epoch;
    model->train();
    ProgressBar bar("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(config.epochs),
                    steps_per_epoch - loader.state().next_batch, config.batch_size);
    // A run resumed inside an epoch continues that epoch's sums.
    const bool continuing = loader.state().next_batch > 0;
    double loss_sum = continuing ? state.epoch_loss_sum : 0;
    int64_t seen = continuing ? state.epoch_seen : 0, correct = continuing ? state.epoch_correct : 0, done = 0;
    float lr = schedule.lr_at(state.step);
    while (auto batch = loader.next()) {
      lr = schedule.lr_at(state.step);
      sgd.options().lr = lr;
      model->zero_grad();
      const Tensor logits = (*model)(batch->images);
      const Tensor loss = cross_entropy(logits, batch->labels);
      const float loss_value = loss.item();
      if (!std::isfinite(loss_value)) {
        throw TrainingDiverged("training diverged at step " + std::to_string(state.step + 1) + " (epoch " +
                               std::to_string(epoch + 1) + ", lr " + std::to_string(lr) + "): the loss is " +
                               std::to_string(loss_value) + "; nothing was saved after it; the last good checkpoint is " +
                               (fs::exists(last_path) ? last_path.string() : std::string("none (no epoch completed)")));
      }
      loss.backward();
      sgd.step();
      ++state.step;
      if (averages) averages->after_step(state.step);
      const int64_t b = batch->labels.numel();
      loss_sum += static_cast<double>(loss_value) * static_cast<double>(b);
      correct += argmax_matches(logits, batch->labels);
      seen += b;
      bar.update(++done, loss_sum / static_cast<double>(seen), 100.0 * static_cast<double>(correct) / static_cast<double>(seen));
      if (config.max_steps && state.step >= config.max_steps) {
        stopped = true;
        break;
      }
    }
    const double rate = bar.finish();
    if (loader.state().next_batch >= steps_per_epoch) loader.start_epoch(epoch + 1);  // stopped on the last batch
    const bool epoch_complete = loader.state().epoch == epoch + 1;
    state.loader = loader.state();
    state.rng = rng.state();
    state.epoch_loss_sum = epoch_complete ? 0 : loss_sum;
    state.epoch_correct = epoch_complete ? 0 : correct;
    state.epoch_seen = epoch_complete ? 0 : seen;
    if (epoch_complete) {
      state.epoch = epoch + 1;
      const json base = {{"epoch", state.epoch}, {"step", state.step}, {"lr", lr}, {"model", "sgd"}, {"bn", "running"}};
      json train_row = base;
      train_row.update({{"split", "train"}, {"accuracy", seen ? 100.0 * static_cast<double>(correct) / static_cast<double>(seen) : 0.0},
                        {"loss", seen ? loss_sum / static_cast<double>(seen) : 0.0}, {"images", seen}});
      metrics.append(train_row);
      std::string summary = "epoch " + std::to_string(state.epoch) + "/" + std::to_string(config.epochs);
      char buf[160];
      std::snprintf(buf, sizeof buf, "  lr %.4f  train loss %.3f acc %.2f%%", lr, loss_sum / std::max<int64_t>(seen, 1),
                    100.0 * static_cast<double>(correct) / static_cast<double>(std::max<int64_t>(seen, 1)));
      summary += buf;
      if (state.epoch % config.eval_every == 0 || state.epoch == config.epochs)
        summary += protocol.evaluate_epoch(state.epoch, state.step, lr, metrics);
      std::snprintf(buf, sizeof buf, "  (%.0f img/s, %s)", rate, format_duration(bar.seconds()).c_str());
      std::printf("%s%s\n", summary.c_str(), buf);
    }
    std::map<std::string, std::string> extra_metadata = {{"polyak.selection", protocol.selection().dump()}};
    if (averages) extra_metadata.merge(averages->state_metadata());
    save_training_checkpoint(last_path.string(), *model, sgd, state,
                             averages ? averages->state_tensors() : std::vector<nn::NamedTensor>{}, extra_metadata);
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
