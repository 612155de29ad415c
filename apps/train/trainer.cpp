#include "apps/train/trainer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
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
#include "apps/train/data_parallel.h"
#include "apps/train/protocol.h"
#include "apps/train/resume.h"
#include "engine/backend.h"
#include "engine/cuda/settings.h"
#include "engine/distributed.h"
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

// What is not finite in the step just computed ("" when all is well): a part's loss
// (with the part named when there are several), or a gradient.
std::string nonfinite_part(const std::vector<PartResult>& parts, const nn::Module& model) {
  for (size_t p = 0; p < parts.size(); ++p)
    if (!std::isfinite(parts[p].loss))
      return "the loss is " + number_str(parts[p].loss) +
             (parts.size() > 1 ? " (part " + std::to_string(p + 1) + " of " + std::to_string(parts.size()) + ")" : "");
  const std::string name = first_nonfinite(model, true);
  return name.empty() ? "" : "the gradient of " + name + " is not finite";
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

// Test hook of data-parallel runs: with POLYAK_FAULT_KILL_RANK=r@N, rank r kills itself
// (SIGKILL) right after optimiser step N, as a lost machine would end; the launcher
// then ends the job (tests/apps/test_data_parallel.cpp).
void fault_kill_rank_at(int64_t step, int rank) {
  static const std::pair<long long, long long> at = [] {
    long long r = -1, n = -1;
    if (const char* value = std::getenv("POLYAK_FAULT_KILL_RANK")) std::sscanf(value, "%lld@%lld", &r, &n);
    return std::pair{r, n};
  }();
  if (rank == at.first && step == at.second) std::raise(SIGKILL);
}

// The output folder, checked before any work so that a bad path fails at once: it must
// be writable and, unless the run is resumed, hold no run yet.
fs::path prepare_run_folder(const TrainConfig& config) {
  const fs::path out_dir(config.output);
  prepare_output_folder("--output", config.output);
  for (const std::string& name : io::remove_stale_temp_files(config.output))
    std::printf("removed %s, left by an interrupted write\n", (out_dir / name).string().c_str());
  const fs::path last_path = out_dir / "last.safetensors";
  if (config.resume.empty() && fs::exists(last_path))
    throw std::invalid_argument("--output " + config.output + " already holds a run (" + last_path.string() +
                                "); pass --resume " + last_path.string() + " to continue it, or choose another --output");
  return out_dir;
}

// The images of a run: the dataset, its train/validation split, and the labels training
// sees where they are noisy.
struct TrainingData {
  Datasets sets;
  std::optional<data::NoisyLabels> noise;
  data::Split split;
};

TrainingData load_training_data(const TrainConfig& config) {
  TrainingData d;
  d.sets = load_datasets(config.dataset, config.data_dir);
  keep_first(d.sets.train, config.train_subset);
  keep_first(d.sets.test, config.test_subset);
  // Noisy labels are for training only: the split is drawn on the clean labels (so that
  // eval reproduces it from the seed alone) and the validation images keep them, so
  // that selection and temperature scaling are judged on clean held-out data.
  d.noise = noisy_labels(config, d.sets.train);
  d.split = data::train_val_split(d.sets.train.labels, d.sets.train.num_classes, config.val_split, config.seed);
  if (d.noise) {
    int64_t wrong = 0;
    for (const int64_t i : d.split.train) {
      d.sets.train.labels[static_cast<size_t>(i)] = d.noise->labels[static_cast<size_t>(i)];
      wrong += d.noise->is_noisy(i);
    }
    std::printf("labels: %s, %.2f%% of the %zu training images wrong; validation labels clean\n",
                config.labels_file.empty() ? (config.noise_type + " noise").c_str() : config.labels_file.c_str(),
                100.0 * static_cast<double>(wrong) / static_cast<double>(std::max<size_t>(d.split.train.size(), 1)),
                d.split.train.size());
  }
  if (config.batch_size > static_cast<int64_t>(d.split.train.size()))
    throw std::invalid_argument("--batch-size " + std::to_string(config.batch_size) + ": larger than the " +
                                std::to_string(d.split.train.size()) + " training images");
  return d;
}

Device select_device(const TrainConfig& config) {
  const Device device = device_from_flag(config.device);
  set_cuda_tf32(config.tf32);
  set_cuda_deterministic(config.deterministic);
  return device;
}

// The model on its device with packed arenas, its weights drawn from `rng` or read
// from --init.
std::shared_ptr<nn::Module> build_model(const TrainConfig& config, int classes, Device device, Rng& rng) {
  auto model = models::create_model(config.model, classes, rng);
  model->to(device);
  model->pack_arenas();
  if (!config.init.empty()) {
    try {
      load_model(config.init, *model, config.model);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("--init ") + e.what());
    }
  }
  return model;
}

data::LoaderOptions training_loader_options(const TrainConfig& config, Device device, const dist::Communicator& ranks) {
  data::LoaderOptions options;
  options.share_index = ranks.rank();
  options.share_count = ranks.size();
  options.batch_size = config.batch_size;
  options.shuffle = config.shuffle;
  options.augment = config.augment;
  options.seed = config.seed;
  options.device = device;
  return options;
}

// The learning-rate schedule on the grid of optimiser steps (epochs become steps).
Schedule make_schedule(const TrainConfig& config, int64_t steps_per_epoch) {
  Schedule schedule;
  schedule.kind = parse_schedule_kind(config.sched);
  schedule.base_lr = config.lr;
  schedule.warmup_steps = std::lround(config.warmup_epochs * static_cast<double>(steps_per_epoch));
  schedule.total_steps = config.epochs * steps_per_epoch;
  schedule.gamma = config.gamma;
  for (int m : config.milestones) schedule.milestone_steps.push_back(m * steps_per_epoch);
  return schedule;
}

std::optional<ema::EmaSet> make_averages(const TrainConfig& config, nn::Module& model, int64_t total_steps,
                                         dist::Communicator& ranks) {
  if (const auto options = config.ema_options(total_steps))
    return std::optional<ema::EmaSet>(std::in_place, model, *options, &ranks);
  return std::nullopt;
}

// Every part of every batch must hold an image: the smallest batch (an epoch's last)
// splits into ranks x accum-steps parts.
void check_batch_splits(const TrainConfig& config, const data::Loader& loader, int ranks) {
  const int64_t parts = static_cast<int64_t>(ranks) * config.accum_steps;
  const int64_t last = loader.size() - (loader.batches_per_epoch() - 1) * config.batch_size;
  const int64_t smallest = std::min(config.batch_size, last);
  if (smallest >= parts) return;
  throw std::invalid_argument("--batch-size " + std::to_string(config.batch_size) + ": its batches (the smallest, an epoch's last, has " +
                              std::to_string(smallest) + " images) cannot be split into " + std::to_string(ranks) +
                              " ranks x " + std::to_string(config.accum_steps) +
                              " micro-batches (--accum-steps); use fewer ranks or a larger batch");
}

// A training run, set up (or resumed) by the constructor and carried to its end by
// run(). Each phase is one method over the state they share: a step, the end of an
// epoch, a checkpoint, the end of the run.
class Trainer {
 public:
  Trainer(const TrainConfig& config, std::optional<io::SafetensorsFile> checkpoint, dist::Communicator& ranks)
      : config_(config),
        ranks_(ranks),
        writer_(ranks.rank() == 0),
        out_dir_(writer_ ? prepare_run_folder(config) : fs::path(config.output)),
        last_path_(out_dir_ / "last.safetensors"),
        data_(load_training_data(config)),
        device_(select_device(config)),
        rng_(config.seed),
        model_(build_model(config, data_.sets.train.num_classes, device_, rng_)),
        sgd_(*model_, {.lr = config.lr, .momentum = config.momentum, .weight_decay = config.weight_decay,
                       .nesterov = config.nesterov}),
        loader_(data_.sets.train, data_.split.train, training_loader_options(config, device_, ranks)),
        steps_per_epoch_(loader_.batches_per_epoch()),
        schedule_(make_schedule(config, steps_per_epoch_)),
        averages_(make_averages(config, *model_, schedule_.total_steps, ranks)),
        protocol_(config, *model_, averages_ ? &*averages_ : nullptr, data_.sets, data_.split, out_dir_, ranks,
                  data_.noise ? &*data_.noise : nullptr),
        metrics_(out_dir_ / "metrics.jsonl") {
    check_batch_splits(config_, loader_, ranks_.size());
    if (checkpoint) {
      resume_from(*checkpoint);
      checkpoint.reset();  // all of it is restored: its memory goes back before training
    } else {
      start_fresh();
    }
    state_.config_json = config_.definition().to_json();
    loader_.set_state(state_.loader);
    print_plan();
  }

  // See check_same_start in apps/train/data_parallel.h.
  void check_same_start() { app::check_same_start(ranks_, state_.config_json, *model_); }

  void run() {
    while (loader_.state().epoch < config_.epochs)
      if (!train_epoch()) break;  // --max-steps
    if (state_.epoch >= config_.epochs) finish();
  }

 private:
  void start_fresh() {
    state_.loader = loader_.state();
    if (!writer_) return;
    io::write_file_atomically((out_dir_ / "config.json").string(), config_.to_json() + "\n");
    metrics_.start_fresh();
    save_model((out_dir_ / "init.safetensors").string(), *model_, {{"polyak.model", config_.model}});
  }

  void resume_from(const io::SafetensorsFile& checkpoint) {
    Resumed resumed = restore_run(checkpoint, config_, steps_per_epoch_, *model_, sgd_, averages_ ? &*averages_ : nullptr);
    state_ = resumed.state;
    protocol_.set_selection(std::move(resumed.selection));
    saved_path_ = config_.resume;
    saved_step_ = state_.step;
    rng_.set_state(state_.rng);
    if (writer_) metrics_.keep_through_epoch(state_.epoch);
    if (resumed.ranks != ranks_.size())
      std::printf("note: the checkpoint was saved by %d rank(s), this job has %d: the run goes on from it, but is no "
                  "longer bit-identical to one that keeps its ranks\n",
                  resumed.ranks, ranks_.size());
    std::printf("resumed %s at epoch %lld, step %lld\n", config_.resume.c_str(), static_cast<long long>(state_.epoch),
                static_cast<long long>(state_.step));
  }

  void print_plan() const {
    if (averages_) {
      const size_t exponential = averages_->exponential_count();
      std::printf("averaging: %zu EMAs (", exponential);
      for (size_t k = 0; k < exponential; ++k) std::printf("%s%s", k ? ", " : "", averages_->name(k).c_str());
      std::printf(") every %lld steps, warm-up %s, buffers %s, BN recompute %s\n",
                  static_cast<long long>(averages_->options().every), averages_->options().warmup ? "on" : "off",
                  ema::buffer_policy_name(averages_->options().buffers), config_.bn_recompute.c_str());
      if (averages_->size() > exponential) {
        std::printf("post-hoc EMA: %zu power averages (", averages_->size() - exponential);
        for (size_t k = exponential; k < averages_->size(); ++k)
          std::printf("%s%s", k > exponential ? ", " : "", averages_->name(k).c_str());
        std::printf(") every step, snapshots every %lld steps to %s/phema\n",
                    static_cast<long long>(config_.phema_period(schedule_.total_steps)), config_.output.c_str());
      }
    }
    if (ranks_.size() > 1 || config_.accum_steps > 1) {
      const int64_t parts = ranks_.size() * config_.accum_steps;
      std::printf("data-parallel: %d rank(s) (%s) x %lld micro-batch(es): each step's batch of %lld in %lld parts of "
                  "about %lld images%s\n",
                  ranks_.size(), ranks_.description().c_str(), static_cast<long long>(config_.accum_steps),
                  static_cast<long long>(config_.batch_size), static_cast<long long>(parts),
                  static_cast<long long>(config_.batch_size / parts),
                  averages_ && ranks_.size() > 1 ? ", averages sharded over the ranks" : "");
    }
    std::printf("train: %s on %s (%zu train / %zu val / %lld test images), %lld parameters, batch %lld, %d epochs, "
                "%s lr %.3g, %d threads -> %s\n",
                config_.model.c_str(), config_.dataset.c_str(), data_.split.train.size(), data_.split.val.size(),
                static_cast<long long>(data_.sets.test.count), static_cast<long long>(model_->parameter_arena().numel()),
                static_cast<long long>(config_.batch_size), config_.epochs, config_.sched.c_str(), config_.lr,
                num_threads(), config_.output.c_str());
  }

  // The rest of the current epoch (all of it, or what a resumed run had left), its
  // evaluation and its checkpoint; false when --max-steps stopped the run.
  bool train_epoch() {
    const int64_t epoch = loader_.state().epoch;
    model_->train();
    ProgressBar bar("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(config_.epochs),
                    steps_per_epoch_ - loader_.state().next_batch, config_.batch_size);
    if (loader_.state().next_batch == 0) clear_epoch_sums();  // a resumed epoch continues its sums
    int64_t done = 0;
    bool stopped = false;
    float lr = schedule_.lr_at(state_.step);
    while (auto batch = loader_.next()) {
      lr = schedule_.lr_at(state_.step);
      step(*batch, epoch, lr);
      const double seen = static_cast<double>(std::max<int64_t>(state_.epoch_seen, 1));
      bar.update(++done, state_.epoch_loss_sum / seen, 100.0 * static_cast<double>(state_.epoch_correct) / seen);
      fault_stop_at(state_.step);
      fault_kill_rank_at(state_.step, ranks_.rank());
      if (config_.max_steps && state_.step >= config_.max_steps) {
        stopped = true;
        break;
      }
      // Mid-epoch checkpoints; the one of the epoch's last batch follows its evaluation.
      if (config_.save_every && state_.step % config_.save_every == 0 && loader_.state().next_batch < steps_per_epoch_)
        save_checkpoint();
    }
    const double rate = bar.finish();
    if (loader_.state().next_batch >= steps_per_epoch_) loader_.start_epoch(epoch + 1);  // stopped on the last batch
    if (loader_.state().epoch == epoch + 1) end_epoch(lr, rate, bar.seconds());
    save_checkpoint();
    return !stopped;
  }

  // One optimiser step on `batch` (this rank's share of it) at learning rate `lr`, or a
  // skipped one (see --on-nonfinite) when a loss or a gradient is not finite. The batch
  // goes through the model in parts (apps/train/data_parallel.h); one process with no
  // --accum-steps has a single part, the batch itself.
  void step(const data::Batch& batch, int64_t epoch, float lr) {
    sgd_.options().lr = lr;
    const std::vector<Part> parts = split_parts(batch, ranks_.rank(), ranks_.size(), config_.accum_steps);
    std::vector<Tensor> buffers_before;  // a skipped step restores them; each part starts from them
    if (config_.on_nonfinite == "skip" || parts.size() > 1) buffers_before = copy_buffers(*model_);
    const std::vector<PartResult> results = forward_backward(
        ranks_, *model_, parts, [](const Tensor& logits, const Tensor& labels) { return cross_entropy(logits, labels); },
        buffers_before, exchange_times_);
    if (const std::string bad = nonfinite_part(results, *model_); !bad.empty()) {
      skip_step(bad, epoch, lr, buffers_before);
      return;
    }
    state_.consecutive_skips = 0;
    ++exchange_times_.steps;
    sgd_.step();
    // A finite loss and gradient can still step to weights that overflow; that cannot
    // be skipped (the old weights are gone), so it always stops the run.
    if (const std::string name = first_nonfinite(*model_, false); !name.empty())
      throw diverged(state_.step + 1, "the update made " + name + " non-finite", epoch, lr);
    ++state_.step;
    if (averages_) {
      averages_->after_step(state_.step);
      snapshot_power_averages();
    }
    for (const PartResult& r : results) {
      state_.epoch_loss_sum += r.loss * r.images;
      state_.epoch_correct += static_cast<int64_t>(r.correct);
      state_.epoch_seen += static_cast<int64_t>(r.images);
    }
  }

  // Skipped: no update of the weights, the momentum or the averages, and the BN
  // statistics as before the batch. The step still counts (the batch is used up, and
  // the schedule stays on the epochs' grid), and the epoch's loss and accuracy leave
  // the batch out. With --on-nonfinite stop, or too many skips in a row, the run ends.
  void skip_step(const std::string& bad, int64_t epoch, float lr, const std::vector<Tensor>& buffers_before) {
    if (config_.on_nonfinite == "stop") throw diverged(state_.step + 1, bad, epoch, lr);
    if (++state_.consecutive_skips > config_.max_skips)
      throw diverged(state_.step + 1, bad + ", " + std::to_string(config_.max_skips) + " steps in a row (--max-skips)",
                     epoch, lr);
    restore_buffers(*model_, buffers_before);
    std::printf("warning: step %lld (epoch %lld, lr %s) skipped: %s (%lld in a row)\n",
                static_cast<long long>(state_.step + 1), static_cast<long long>(epoch + 1), number_str(lr).c_str(),
                bad.c_str(), static_cast<long long>(state_.consecutive_skips));
    ++state_.epoch_skipped;
    ++state_.step;
  }

  // The epoch's train row, its evaluation (every --eval-every epochs and after the
  // last) and its line on the console.
  void end_epoch(float lr, double rate, double seconds) {
    ++state_.epoch;
    const double seen = static_cast<double>(state_.epoch_seen);
    const double accuracy = seen > 0 ? 100.0 * static_cast<double>(state_.epoch_correct) / seen : 0.0;
    const double loss = seen > 0 ? state_.epoch_loss_sum / seen : 0.0;
    json train_row = {{"epoch", state_.epoch}, {"step", state_.step}, {"lr", lr}, {"model", "sgd"}, {"bn", "running"}};
    train_row.update({{"split", "train"}, {"accuracy", accuracy}, {"loss", loss}, {"images", state_.epoch_seen},
                      {"skipped", state_.epoch_skipped}, {"memory", memory_json(host_memory())}});
    if (writer_) metrics_.append(train_row);
    std::string summary = "epoch " + std::to_string(state_.epoch) + "/" + std::to_string(config_.epochs);
    char buf[160];
    std::snprintf(buf, sizeof buf, "  lr %.4f  train loss %.3f acc %.2f%%", lr, loss, accuracy);
    summary += buf;
    if (state_.epoch_skipped) summary += "  (" + std::to_string(state_.epoch_skipped) + " steps skipped)";
    if (state_.epoch % config_.eval_every == 0 || state_.epoch == config_.epochs)
      summary += protocol_.evaluate_epoch(state_.epoch, state_.step, lr, metrics_);
    std::snprintf(buf, sizeof buf, "  (%.0f img/s, %s", rate, format_duration(seconds).c_str());
    summary += buf;
    if (ranks_.size() > 1) summary += exchange_times_.per_step();  // what data parallelism cost
    std::printf("%s)\n", summary.c_str());
    exchange_times_ = {};
    clear_epoch_sums();
  }

  void clear_epoch_sums() {
    state_.epoch_loss_sum = 0;
    state_.epoch_correct = state_.epoch_seen = state_.epoch_skipped = 0;
  }

  // Every phema_period steps and at the last step, each power average to
  // <output>/phema/<name>-<step>.safetensors: the model's tensors under PyTorch names,
  // with the average's sigma_rel and step in the metadata (what apps/phema reads). A
  // resumed run writes the same files again from its checkpoint on.
  void snapshot_power_averages() {
    const int64_t total = schedule_.total_steps;
    if (state_.step % config_.phema_period(total) != 0 && state_.step != total) return;
    for (size_t k = averages_->exponential_count(); k < averages_->size(); ++k) {
      const fs::path folder = out_dir_ / "phema";
      if (writer_) fs::create_directories(folder);
      char file[64];
      std::snprintf(file, sizeof file, "%s-%09lld.safetensors", averages_->name(k).c_str(),
                    static_cast<long long>(state_.step));
      ema::EmaSet::Use use(*averages_, k);  // on every rank: gathers a sharded average
      if (!writer_) continue;
      save_model((folder / file).string(), *model_,
                 {{"polyak.model", config_.model},
                  {"polyak.phema.sigma_rel", number_str(averages_->sigma_rel(k))},
                  {"polyak.phema.step", std::to_string(state_.step)}},
                 config_.phema_dtype == "f16" ? io::FloatStorage::F16 : io::FloatStorage::F32);
    }
  }

  // The checkpoint of where the run stands: after epoch state_.epoch, or inside the
  // next one with the loader's position and the epoch's running sums.
  void save_checkpoint() {
    state_.loader = loader_.state();
    state_.rng = rng_.state();
    std::map<std::string, std::string> extra_metadata = {{"polyak.selection", protocol_.selection().dump()},
                                                         {"polyak.ranks", std::to_string(ranks_.size())}};
    if (averages_) extra_metadata.merge(averages_->state_metadata());
    // Gathered on every rank (a collective call), written by rank 0.
    const std::vector<nn::NamedTensor> average_tensors = averages_ ? averages_->state_tensors() : std::vector<nn::NamedTensor>{};
    if (writer_) save_training_checkpoint(last_path_.string(), *model_, sgd_, state_, average_tensors, extra_metadata);
    saved_path_ = last_path_.string();
    saved_step_ = state_.step;
  }

  // The final model, the protocol's selection and tables, and the report.
  void finish() {
    if (writer_) save_model((out_dir_ / "model.safetensors").string(), *model_, {{"polyak.model", config_.model}});
    protocol_.finish(state_.epoch, state_.step, schedule_.lr_at(state_.step - 1), metrics_);
    if (!writer_) return;
    const fs::path report = out_dir_ / "report.html";
    write_report({out_dir_.string()}, report.string());
    std::printf("report: %s\n", report.string().c_str());
  }

  // The error of a run stopped at `step` by a non-finite `what`.
  TrainingDiverged diverged(int64_t step, const std::string& what, int64_t epoch, float lr) const {
    return TrainingDiverged(
        "training diverged at step " + std::to_string(step) + " (epoch " + std::to_string(epoch + 1) + ", lr " +
        number_str(lr) + "): " + what + "; stopped without saving; the last good checkpoint is " +
        (saved_path_.empty() ? std::string("none (none was written yet)")
                             : saved_path_ + " (step " + std::to_string(saved_step_) + ")"));
  }

  const TrainConfig config_;
  dist::Communicator& ranks_;
  const bool writer_;  // rank 0 writes the run folder; every rank computes all of it
  const fs::path out_dir_, last_path_;
  TrainingData data_;
  const Device device_;
  Rng rng_;
  std::shared_ptr<nn::Module> model_;
  Sgd sgd_;
  data::Loader loader_;
  const int64_t steps_per_epoch_;
  const Schedule schedule_;
  std::optional<ema::EmaSet> averages_;
  Protocol protocol_;
  MetricsLog metrics_;
  TrainingState state_;
  ExchangeTimes exchange_times_;  // this epoch's, on this rank
  std::string saved_path_;  // the last good checkpoint, and its step
  int64_t saved_step_ = 0;
};

}  // namespace

int run_training(TrainConfig config) {
  const auto run_start = std::chrono::steady_clock::now();
  if (dist::launched_by_mpi() && !dist::mpi_available())
    throw std::invalid_argument("started by an MPI launcher, but this build of train has no MPI: each process would "
                                "train alone (install libopenmpi-dev or libmpich-dev and rebuild)");
  dist::Communicator& ranks = dist::world();
  // Rank 0 speaks for the job; the others' errors still reach stderr.
  if (ranks.rank() != 0 && !std::freopen("/dev/null", "w", stdout))
    throw std::runtime_error("cannot silence rank " + std::to_string(ranks.rank()) + "'s output");
  std::optional<Trainer> trainer;
  run_on_every_rank(ranks, [&] {
    std::optional<io::SafetensorsFile> checkpoint;
    if (!config.resume.empty()) {
      checkpoint = read_resumed_checkpoint(config.resume);
      config = resumed_config(config, *checkpoint);
    }
    config.resolve();
    config.validate();
    if (config.threads) {
      set_num_threads(config.threads);
    } else if (ranks.local_size() > 1) {
      set_num_threads(std::max(1, num_threads() / ranks.local_size()));  // the machine's cores, shared
    }
    if (config.device == "cuda" && ranks.local_size() > 1) set_cuda_device_index(ranks.local_rank());
    trainer.emplace(config, std::move(checkpoint), ranks);
  });
  if (ranks.size() > 1) run_on_every_rank(ranks, [&] { trainer->check_same_start(); });
  trainer->run();
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  std::printf("done in %s: %s\n", format_duration(total).c_str(), config.output.c_str());
  return 0;
}

}  // namespace polyak::app
