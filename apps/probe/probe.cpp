#include "apps/common/cli.h"
#include "apps/probe/probe.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "apps/common/datasets.h"
#include "apps/common/evaluate.h"
#include "apps/common/progress.h"
#include "apps/eval/checkpoint_model.h"
#include "apps/report/report.h"
#include "data/loader.h"
#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "engine/optim/schedule.h"
#include "engine/optim/sgd.h"
#include "engine/parallel.h"
#include "engine/rng.h"
#include "models/registry.h"

namespace polyak::app {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

void add_probe_flags(CLI::App& app, ProbeConfig& c) {
  app.add_option("checkpoint", c.checkpoint, "checkpoint whose backbone is probed (.safetensors), or with --selected a run folder")
      ->required();
  app.add_option("--selected", c.selected,
                 "probe a run's selected model: sgd_final, sgd_best, ema_acc, ema_loss, ema_acc_bn or ema_loss_bn "
                 "(a row of RUN/selection.json)");
  app.add_option("--bn-recompute", c.bn_recompute, "recompute the backbone's BN statistics on the target's training images: "
                                                   "on or off")->capture_default_str();
  app.add_option("--bn-recompute-batches", c.bn_recompute_batches, "batches of the recompute (0: one pass)")
      ->capture_default_str();
  app.add_option("--model", c.model, "architecture (default: from the checkpoint's metadata)");
  app.add_option("--ema", c.weights, "backbone weights: sgd (the checkpoint's own) or an average (ema0.998)")->capture_default_str();
  app.add_option("--dataset", c.dataset, "target dataset: cifar10, cifar100 or folder")->capture_default_str();
  app.add_option("--data", c.data_dir, "dataset folder (default: $POLYAK_DATA/<dataset> or ../shared/data/<dataset>)");
  app.add_option("--train-subset", c.train_subset, "train on the first N training images (0: all)")->capture_default_str();
  app.add_option("--test-subset", c.test_subset, "test on the first N test images (0: all)")->capture_default_str();
  app.add_option("--epochs", c.epochs, "epochs of the head's training")->capture_default_str();
  app.add_option("--batch-size", c.batch_size, "images per step")->capture_default_str();
  app.add_option("--lr", c.lr, "learning rate")->capture_default_str();
  app.add_option("--momentum", c.momentum, "SGD momentum")->capture_default_str();
  app.add_flag("--nesterov,!--no-nesterov", c.nesterov, "Nesterov momentum (default on)");
  app.add_option("--weight-decay", c.weight_decay, "L2 weight decay of the head")->capture_default_str();
  app.add_option("--sched", c.sched, "learning-rate schedule: constant or cosine")->capture_default_str();
  app.add_option("--seed", c.seed, "seed of the head's initialisation, shuffling and augmentation")->capture_default_str();
  app.add_flag("--augment", c.augment, "crop and flip the training images (features recomputed every batch)");
  app.add_option("--output", c.output, "write the trained head to this file (safetensors)");
  app.add_option("--output-model", c.output_model, "write backbone + trained head to this file (a model checkpoint)");
  app.add_option("--json", c.json, "also write the results as JSON to this file ('-': stdout, the table to stderr)");
  app.add_option("--device", c.device, "cpu or cuda")->capture_default_str();
  app.add_option("--threads", c.threads, "CPU threads (default: all cores)");
}

void ProbeConfig::validate() const {
  if (selected.empty()) {
    require_file("checkpoint", checkpoint);
  } else {
    const auto& rows = reported_row_labels();
    if (std::none_of(rows.begin(), rows.end(), [&](const auto& row) { return row.first == selected; }))
      bad_flag("--selected", selected, "sgd_final, sgd_best, ema_acc, ema_loss, ema_acc_bn or ema_loss_bn");
    if (!is_folder(checkpoint)) bad_flag("--selected with checkpoint", checkpoint, "a run folder");
    if (weights != "sgd") bad_flag("--ema with --selected", weights, "only one of them");
  }
  if (bn_recompute != "on" && bn_recompute != "off") bad_flag("--bn-recompute", bn_recompute, "on or off");
  if (bn_recompute_batches < 0) bad_flag("--bn-recompute-batches", std::to_string(bn_recompute_batches), "an integer >= 0");
  if (!model.empty()) {
    const auto& names = models::model_names();
    if (std::find(names.begin(), names.end(), model) == names.end()) {
      std::string known;
      for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
      bad_flag("--model", model, "one of " + known);
    }
  }
  if (weights != "sgd" && (weights.rfind("ema", 0) != 0 || weights.size() == 3))
    bad_flag("--ema", weights, "sgd or the name of an average such as ema0.998");
  if (dataset != "cifar10" && dataset != "cifar100" && dataset != "folder") bad_flag("--dataset", dataset, "cifar10, cifar100 or folder");
  if (train_subset < 0) bad_flag("--train-subset", std::to_string(train_subset), "an integer >= 0");
  if (test_subset < 0) bad_flag("--test-subset", std::to_string(test_subset), "an integer >= 0");
  if (epochs < 1 || epochs > 100000) bad_flag("--epochs", std::to_string(epochs), "an integer from 1 to 100000");
  if (batch_size < 1 || batch_size > 65536) bad_flag("--batch-size", std::to_string(batch_size), "an integer from 1 to 65536");
  if (!(lr > 0) || !std::isfinite(lr)) bad_flag("--lr", number_str(lr), "a positive number");
  if (!(momentum >= 0 && momentum < 1)) bad_flag("--momentum", number_str(momentum), "a number in [0, 1)");
  if (nesterov && momentum == 0) bad_flag("--nesterov with --momentum", "0", "momentum > 0 (or --no-nesterov)");
  if (!(weight_decay >= 0) || !std::isfinite(weight_decay)) bad_flag("--weight-decay", number_str(weight_decay), "a number >= 0");
  if (sched != "constant" && sched != "cosine") bad_flag("--sched", sched, "constant or cosine");
  if (device != "cpu" && device != "cuda") bad_flag("--device", device, "cpu or cuda");
  if (threads < 0 || threads > 1024) bad_flag("--threads", std::to_string(threads), "an integer from 1 to 1024 (0: all cores)");
  check_output_file("--output", output);
  check_output_file("--output-model", output_model);
  check_output_file("--json", json);
}

std::string ProbeConfig::checkpoint_file() const {
  if (selected.empty()) return checkpoint;
  if (selected == "sgd_final") return (fs::path(checkpoint) / "model.safetensors").string();
  const std::string path = (fs::path(checkpoint) / "selection.json").string();
  std::ifstream in(path);
  // (nlohmann spelled out: in a member of ProbeConfig, `json` is its --json file)
  const nlohmann::json selection = nlohmann::json::parse(in, nullptr, false);
  if (selection.is_discarded() || !selection.is_object())
    throw std::invalid_argument("--selected " + selected + ": " + path + " is missing or not JSON");
  const nlohmann::json& rows = selection.contains("reported") ? selection["reported"] : nlohmann::json();
  if (!rows.is_object() || !rows.contains(selected) || !rows[selected].contains("file") ||
      !rows[selected]["file"].is_string())
    throw std::invalid_argument("--selected " + selected + ": " + path + " has no such row (a run without a "
                                "validation split, averages or BN recompute has fewer rows)");
  const std::string file = rows[selected]["file"];
  if (file.find('/') != std::string::npos) throw std::invalid_argument(path + ": row " + selected + " names a file elsewhere");
  return (fs::path(checkpoint) / file).string();
}


namespace {

// The backbone's BN statistics, recomputed on the target's training images in batches
// as the head will see them (plain, or cropped and flipped with --augment).
void recompute_on_target(nn::Module& backbone, const data::ImageSet& train, const std::vector<int64_t>& indices,
                         const ProbeConfig& config, Device device) {
  data::Loader loader(train, indices, recompute_loader_options(config.batch_size, config.augment, config.seed, device));
  recompute_bn_on(backbone, loader, config.bn_recompute_batches);
  backbone.eval();
}

// The checkpoint's model, frozen in eval mode, and what the new head replaces: its
// input width and the name of its parameters' prefix ("fc.").
struct Backbone {
  CheckpointModel checkpoint;
  models::Classifier* classifier = nullptr;
  int64_t feature_dim = 0;
  std::string head_prefix;
};

Backbone load_backbone(const ProbeConfig& config, Device device) {
  if (!config.selected.empty()) require_file("--selected " + config.selected + ":", config.checkpoint);
  Backbone b;
  b.checkpoint = load_checkpoint_model(config.checkpoint, config.model, 0, device);
  load_weights(b.checkpoint, config.weights);
  b.checkpoint.model->eval();
  b.classifier = &models::as_classifier(*b.checkpoint.model);
  b.feature_dim = b.classifier->head().weight.size(1);
  for (const auto& [name, module] : b.checkpoint.model->named_modules())
    if (module == &b.classifier->head() && !name.empty()) b.head_prefix = name + ".";
  return b;
}

Datasets load_target(const ProbeConfig& config) {
  Datasets sets = load_datasets(config.dataset, config.data_dir);
  keep_first(sets.train, config.train_subset);
  keep_first(sets.test, config.test_subset);
  if (sets.test.count == 0)
    throw std::invalid_argument("--data " + config.data_dir + ": no test images (a folder dataset needs test/ or val/)");
  if (config.batch_size > sets.train.count)
    throw std::invalid_argument("--batch-size " + std::to_string(config.batch_size) + ": larger than the " +
                                std::to_string(sets.train.count) + " training images");
  return sets;
}

Schedule probe_schedule(const ProbeConfig& config, int64_t images) {
  Schedule schedule;
  schedule.kind = parse_schedule_kind(config.sched);
  schedule.base_lr = config.lr;
  schedule.total_steps = config.epochs * ((images + config.batch_size - 1) / config.batch_size);
  return schedule;
}

struct EpochRow {
  float lr = 0;
  double train_loss = 0, train_accuracy = 0, test_loss = 0, test_accuracy = 0;
};

// A new linear head trained on the frozen backbone's features of the target's training
// images: computed once (no augmentation), or per batch from cropped and flipped images.
class Probe {
 public:
  Probe(const ProbeConfig& config, Device device, Backbone& backbone, const Datasets& sets)
      : config_(config),
        device_(device),
        backbone_(backbone),
        sets_(sets),
        classes_(sets.train.num_classes),
        all_(all_indices(sets.train.count)),
        rng_(config.seed),
        head_(backbone.feature_dim, classes_, rng_),
        sgd_(pack(head_, device),
             {.lr = config.lr, .momentum = config.momentum, .weight_decay = config.weight_decay,
              .nesterov = config.nesterov}),
        schedule_(probe_schedule(config, sets.train.count)) {
    if (config.bn_recompute == "on") recompute_on_target(*backbone.checkpoint.model, sets.train, all_, config, device);
  }

  void print_plan(FILE* out) const {
    std::fprintf(out,
                 "probe: %s (%s, %s weights, %lld features) -> %s: new head %lld -> %d, %lld train / %lld test images, "
                 "%d epochs, batch %lld, %s lr %g, momentum %g%s, weight decay %g, %s\n",
                 config_.checkpoint.c_str(), backbone_.checkpoint.architecture.c_str(), config_.weights.c_str(),
                 static_cast<long long>(backbone_.feature_dim), config_.dataset.c_str(),
                 static_cast<long long>(backbone_.feature_dim), classes_, static_cast<long long>(sets_.train.count),
                 static_cast<long long>(sets_.test.count), config_.epochs, static_cast<long long>(config_.batch_size),
                 config_.sched.c_str(), config_.lr, config_.momentum, config_.nesterov ? " (Nesterov)" : "",
                 config_.weight_decay,
                 config_.augment ? "augmented (features recomputed per batch)" : "no augmentation (features computed once)");
    std::fflush(out);
  }

  // Computes the features that do not change from epoch to epoch: the test images'
  // always, the training images' unless augmenting.
  void prepare_features() {
    test_x_ = Tensor::from_vector(all_features(sets_.test), {sets_.test.count, backbone_.feature_dim}, device_);
    if (config_.augment)
      loader_ = std::make_unique<data::Loader>(sets_.train, all_, training_options());
    else
      train_features_ = all_features(sets_.train);
  }

  EpochRow train_epoch(int epoch) {
    sums_ = {};
    EpochRow row;
    row.lr = schedule_.lr_at(step_);
    for_each_batch(epoch, [&](const Tensor& x, const Tensor& y) { row.lr = train_step(x, y); });
    const Predictions test = predict_test();
    row.test_accuracy = top1_accuracy(test);
    row.test_loss = mean_nll(test);
    row.train_loss = sums_.loss / static_cast<double>(sums_.seen);
    row.train_accuracy = 100.0 * static_cast<double>(sums_.correct) / static_cast<double>(sums_.seen);
    if (!std::isfinite(row.train_loss))
      throw std::runtime_error("the probe diverged in epoch " + std::to_string(epoch + 1) + " (loss " +
                               number_str(row.train_loss) + "); try a smaller --lr");
    return row;
  }

  int64_t step() const { return step_; }
  const nn::Linear& head() const { return head_; }

 private:
  static std::vector<int64_t> all_indices(int64_t n) {
    std::vector<int64_t> all(static_cast<size_t>(n));
    std::iota(all.begin(), all.end(), 0);
    return all;
  }

  static nn::Linear& pack(nn::Linear& head, Device device) {
    head.to(device);
    head.pack_arenas();
    return head;
  }

  data::LoaderOptions training_options() const {
    data::LoaderOptions o;
    o.batch_size = config_.batch_size;
    o.shuffle = true;
    o.augment = true;
    o.seed = config_.seed;
    o.device = device_;
    return o;
  }

  // The backbone's features of every image of `set`, row-major (count x F), on the CPU.
  std::vector<float> all_features(const data::ImageSet& set) const {
    NoGradGuard no_grad;
    std::vector<float> out;
    for (int64_t begin = 0; begin < set.count; begin += 500) {
      std::vector<int64_t> idx(static_cast<size_t>(std::min<int64_t>(500, set.count - begin)));
      std::iota(idx.begin(), idx.end(), begin);
      const std::vector<float> f =
          backbone_.classifier->features(data::to_tensor(set, idx, device_)).to_vector<float>();
      out.insert(out.end(), f.begin(), f.end());
    }
    return out;
  }

  // Calls step(features, labels) for every batch of epoch `epoch`, in the loader's order.
  template <class Step>
  void for_each_batch(int epoch, Step&& step) {
    if (loader_) {
      loader_->start_epoch(epoch);
      while (std::optional<data::Batch> batch = loader_->next()) {
        Tensor x;
        {
          NoGradGuard no_grad;
          x = backbone_.classifier->features(batch->images);
        }
        step(x, batch->labels);
      }
      return;
    }
    const int64_t n = sets_.train.count, dim = backbone_.feature_dim;
    const std::vector<int64_t> order = data::Loader::shuffled(all_, config_.seed, epoch);
    std::vector<float> xb;
    std::vector<int64_t> yb;
    for (int64_t begin = 0; begin < n; begin += config_.batch_size) {
      const int64_t b = std::min(config_.batch_size, n - begin);
      xb.resize(static_cast<size_t>(b * dim));
      yb.resize(static_cast<size_t>(b));
      for (int64_t i = 0; i < b; ++i) {
        const int64_t j = order[static_cast<size_t>(begin + i)];
        std::copy_n(train_features_.data() + j * dim, dim, xb.data() + i * dim);
        yb[static_cast<size_t>(i)] = sets_.train.labels[static_cast<size_t>(j)];
      }
      step(Tensor::from_vector(xb, {b, dim}, device_), Tensor::from_data(yb.data(), {b}, device_));
    }
  }

  // One SGD step of the head on a batch of features; returns its learning rate.
  float train_step(const Tensor& x, const Tensor& y) {
    const float lr = schedule_.lr_at(step_);
    sgd_.options().lr = lr;
    head_.zero_grad();
    const Tensor logits = head_(x);
    const Tensor loss = cross_entropy(logits, y);
    loss.backward();
    sgd_.step();
    ++step_;
    const int64_t b = y.numel();
    sums_.loss += static_cast<double>(loss.item()) * static_cast<double>(b);
    sums_.correct += argmax_matches(logits, y);
    sums_.seen += b;
    return lr;
  }

  Predictions predict_test() {
    NoGradGuard no_grad;
    Predictions p;
    p.classes = classes_;
    p.logits = head_(test_x_).to_vector<float>();
    p.labels = sets_.test.labels;
    return p;
  }

  const ProbeConfig& config_;
  const Device device_;
  Backbone& backbone_;
  const Datasets& sets_;
  const int classes_;
  const std::vector<int64_t> all_;
  Rng rng_;
  nn::Linear head_;
  Sgd sgd_;
  const Schedule schedule_;
  Tensor test_x_;
  std::vector<float> train_features_;      // without augmentation
  std::unique_ptr<data::Loader> loader_;   // with augmentation
  int64_t step_ = 0;
  struct {
    double loss = 0;
    int64_t correct = 0, seen = 0;
  } sums_;
};

// --output (the head alone) and --output-model (the backbone with the new head).
void save_outputs(FILE* out, const ProbeConfig& config, const Backbone& backbone, const nn::Linear& head,
                  const std::map<std::string, std::string>& metadata) {
  const std::string& prefix = backbone.head_prefix;
  const std::string& architecture = backbone.checkpoint.architecture;
  if (!config.output.empty()) {
    std::map<std::string, std::string> head_metadata = metadata;
    head_metadata.erase("polyak.model");  // not a whole model: eval must not take it for one
    head_metadata["polyak.probe.architecture"] = architecture;
    io::save_safetensors(config.output, {{prefix + "weight", head.weight}, {prefix + "bias", head.bias}}, head_metadata);
    std::fprintf(out, "head: %s (%s%s, %s%s)\n", config.output.c_str(), prefix.c_str(), "weight", prefix.c_str(), "bias");
  }
  if (!config.output_model.empty()) {
    std::vector<nn::NamedTensor> state;
    for (const auto& [name, t] : backbone.checkpoint.model->state_dict()) {
      if (name == prefix + "weight") state.emplace_back(name, head.weight);
      else if (name == prefix + "bias") state.emplace_back(name, head.bias);
      else state.emplace_back(name, t);
    }
    io::save_safetensors(config.output_model, state, metadata);
    std::fprintf(out, "model: %s (%s, backbone + new head)\n", config.output_model.c_str(), architecture.c_str());
  }
}

}  // namespace

int run_probe(ProbeConfig config) {
  const Device device = start_app(config);
  FILE* out = table_stream(config.json);
  const auto start = std::chrono::steady_clock::now();

  // The backbone first: a checkpoint that does not fit fails before the data is read.
  config.checkpoint = config.checkpoint_file();
  Backbone backbone = load_backbone(config, device);
  const Datasets sets = load_target(config);
  Probe probe(config, device, backbone, sets);
  probe.print_plan(out);
  probe.prepare_features();

  std::fprintf(out, "%6s %9s %10s %9s %10s %9s\n", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc");
  json epochs = json::array();
  EpochRow last;
  for (int epoch = 0; epoch < config.epochs; ++epoch) {
    last = probe.train_epoch(epoch);
    std::fprintf(out, "%6d %9.5f %10.4f %8.2f%% %10.4f %8.2f%%\n", epoch + 1, last.lr, last.train_loss,
                 last.train_accuracy, last.test_loss, last.test_accuracy);
    std::fflush(out);
    epochs.push_back({{"epoch", epoch + 1}, {"step", probe.step()}, {"lr", last.lr}, {"train_loss", last.train_loss},
                      {"train_accuracy", last.train_accuracy}, {"test_loss", last.test_loss},
                      {"test_accuracy", last.test_accuracy}});
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(out, "probe: test accuracy %.2f%%, loss %.4f after %d epochs (%s)\n", last.test_accuracy, last.test_loss,
               config.epochs, format_duration(seconds).c_str());

  const int classes = sets.train.num_classes;
  const std::string& architecture = backbone.checkpoint.architecture;
  save_outputs(out, config, backbone, probe.head(),
               {{"polyak.model", architecture}, {"polyak.probe.checkpoint", config.checkpoint},
                {"polyak.probe.weights", config.weights}, {"polyak.probe.dataset", config.dataset},
                {"polyak.probe.classes", std::to_string(classes)},
                {"polyak.probe.test_accuracy", number_str(last.test_accuracy)}});
  if (!config.json.empty()) {
    const json doc = {{"checkpoint", config.checkpoint}, {"architecture", architecture}, {"model", config.weights},
                      {"selected", config.selected}, {"bn_recompute", config.bn_recompute},
                      {"dataset", config.dataset}, {"data", config.data_dir}, {"features", backbone.feature_dim},
                      {"classes", classes}, {"train_images", sets.train.count}, {"test_images", sets.test.count},
                      {"settings", {{"epochs", config.epochs}, {"batch_size", config.batch_size}, {"lr", config.lr},
                                    {"momentum", config.momentum}, {"nesterov", config.nesterov},
                                    {"weight_decay", config.weight_decay}, {"sched", config.sched}, {"seed", config.seed},
                                    {"augment", config.augment}}},
                      {"epochs", epochs}, {"test_accuracy", last.test_accuracy}, {"test_loss", last.test_loss},
                      {"seconds", seconds}};
    write_output("--json", config.json, doc.dump(2) + "\n");
  }
  return 0;
}

}  // namespace polyak::app
