#include "apps/common/cli.h"
#include "apps/eval/eval.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "apps/common/datasets.h"
#include "apps/common/evaluate.h"
#include "apps/common/metrics.h"
#include "apps/eval/checkpoint_model.h"
#include "data/folder.h"
#include "data/loader.h"
#include "data/split.h"
#include "engine/backend.h"
#include "engine/parallel.h"
#include "models/registry.h"

namespace polyak::app {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

void add_eval_flags(CLI::App& app, EvalConfig& c) {
  app.add_option("checkpoints", c.checkpoints, "checkpoints to evaluate (.safetensors: model-only or training)")->required();
  app.add_option("--model", c.model, "architecture (default: from each checkpoint's metadata)");
  app.add_option_function<std::string>(
         "--ema",
         [&c](const std::string& v) {
           c.weights.clear();
           std::stringstream list(v);
           std::string item;
           while (std::getline(list, item, ',')) c.weights.push_back(item);
         },
         "weights to evaluate, comma-separated: sgd (the checkpoint's own), an average of a training checkpoint "
         "(ema0.998), or all")
      ->default_str("sgd");
  app.add_option("--dataset", c.dataset, "cifar10, cifar100 or folder")->capture_default_str();
  app.add_option("--data", c.data_dir, "dataset folder (default: $POLYAK_DATA/<dataset> or ../shared/data/<dataset>)");
  app.add_option("--split", c.split, "test, val (the held-out part of the training set) or train (the rest)")->capture_default_str();
  app.add_option("--val-split", c.val_split, "validation fraction, as the train app's (fits the temperature)")->capture_default_str();
  app.add_option("--seed", c.seed, "seed of the validation split (and of the BN recompute batches)")->capture_default_str();
  app.add_option("--train-subset", c.train_subset, "the first N training images, as the train app's (0: all)")->capture_default_str();
  app.add_option("--test-subset", c.test_subset, "the first N test images (0: all)")->capture_default_str();
  app.add_option("--bn-recompute", c.bn_recompute, "recompute BN statistics on training batches first: on or off")->capture_default_str();
  app.add_option("--bn-recompute-batches", c.bn_recompute_batches, "batches of the recompute (0: one pass over the training split)")
      ->capture_default_str();
  app.add_option("--batch-size", c.batch_size, "images per recompute batch")->capture_default_str();
  app.add_flag("!--no-augment", c.augment, "recompute on plain images instead of cropped and flipped ones");
  app.add_option("--json", c.json, "also write the results as JSON to this file ('-': stdout, the table to stderr)");
  app.add_option("--device", c.device, "cpu or cuda")->capture_default_str();
  app.add_option("--threads", c.threads, "CPU threads (default: all cores)");
}

namespace {

// Only the parts of the dataset the evaluation needs (CIFAR's train set is 150 MB).
Datasets load_parts(const std::string& dataset, const std::string& dir, bool train, bool test) {
  if (dataset == "folder") return load_datasets(dataset, dir);
  Datasets sets;
  const auto load = [&](data::CifarSplit split) {
    return dataset == "cifar10" ? data::load_cifar10(dir, split) : data::load_cifar100(dir, split);
  };
  if (train) sets.train = load(data::CifarSplit::Train);
  if (test) sets.test = load(data::CifarSplit::Test);
  return sets;
}

struct Row {
  std::string checkpoint, architecture, weights, bn;
  Predictions predictions;
  double accuracy = 0, loss = 0, ece = 0, ece15 = 0;
  bool calibrated = false;
  double temperature = 1, loss_t = 0, ece_t = 0, ece15_t = 0;
};

json row_json(const Row& r) {
  json out = {{"checkpoint", r.checkpoint}, {"architecture", r.architecture}, {"model", r.weights}, {"bn", r.bn},
              {"accuracy", r.accuracy}, {"loss", r.loss}, {"ece", r.ece}, {"ece15", r.ece15},
              {"images", r.predictions.count()}};
  if (r.calibrated)
    out["temperature_scaled"] = {{"temperature", r.temperature}, {"accuracy", r.accuracy}, {"loss", r.loss_t},
                                 {"ece", r.ece_t}, {"ece15", r.ece15_t}};
  return out;
}

}  // namespace

void EvalConfig::validate() const {
  if (checkpoints.empty()) bad_flag("checkpoints", "(none)", "one or more .safetensors files");
  for (const std::string& path : checkpoints)
    require_file("checkpoint", path);
  if (!model.empty()) {
    const auto& names = models::model_names();
    if (std::find(names.begin(), names.end(), model) == names.end()) {
      std::string known;
      for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
      bad_flag("--model", model, "one of " + known);
    }
  }
  if (weights.empty()) bad_flag("--ema", "(empty)", "sgd, all or average names such as ema0.998");
  for (const std::string& w : weights)
    if (w != "sgd" && w != "all" && (w.rfind("ema", 0) != 0 || w.size() == 3))
      bad_flag("--ema", w, "sgd, all or average names such as ema0.998");
  if (dataset != "cifar10" && dataset != "cifar100" && dataset != "folder") bad_flag("--dataset", dataset, "cifar10, cifar100 or folder");
  if (split != "test" && split != "val" && split != "train") bad_flag("--split", split, "test, val or train");
  if (!(val_split >= 0 && val_split < 1)) bad_flag("--val-split", number_str(val_split), "a fraction in [0, 1)");
  if (split == "val" && val_split == 0) bad_flag("--split", split, "a --val-split > 0 to hold a validation part out");
  if (train_subset < 0) bad_flag("--train-subset", std::to_string(train_subset), "an integer >= 0");
  if (test_subset < 0) bad_flag("--test-subset", std::to_string(test_subset), "an integer >= 0");
  if (bn_recompute != "on" && bn_recompute != "off") bad_flag("--bn-recompute", bn_recompute, "on or off");
  if (bn_recompute_batches < 0) bad_flag("--bn-recompute-batches", std::to_string(bn_recompute_batches), "an integer >= 0");
  if (batch_size < 1 || batch_size > 65536) bad_flag("--batch-size", std::to_string(batch_size), "an integer from 1 to 65536");
  if (device != "cpu" && device != "cuda") bad_flag("--device", device, "cpu or cuda");
  if (threads < 0 || threads > 1024) bad_flag("--threads", std::to_string(threads), "an integer from 1 to 1024 (0: all cores)");
  check_output_file("--json", json);
}

namespace {

// What an evaluation reads: the dataset, its train/validation split (as the train
// app's), and the loader of the BN recompute batches when there is a recompute.
struct EvalInputs {
  Datasets sets;
  data::Split split;
  int classes = 0;
  std::unique_ptr<data::Loader> recompute;
};

EvalInputs load_inputs(const EvalConfig& config, Device device) {
  EvalInputs in;
  const bool recompute = config.bn_recompute == "on";
  const bool need_train = config.split != "test" || config.val_split > 0 || recompute;
  in.sets = load_parts(config.dataset, config.data_dir, need_train, config.split == "test");
  keep_first(in.sets.train, config.train_subset);
  keep_first(in.sets.test, config.test_subset);
  if (config.split == "test" && in.sets.test.count == 0)
    throw std::invalid_argument("--data " + config.data_dir + ": no test images (a folder dataset needs test/ or val/)");
  in.classes = need_train ? in.sets.train.num_classes : in.sets.test.num_classes;
  if (need_train) in.split = data::train_val_split(in.sets.train.labels, in.classes, config.val_split, config.seed);
  if (recompute) {
    if (in.split.train.empty())
      throw std::invalid_argument("--bn-recompute on: no training images left to recompute on (--val-split " +
                                  number_str(config.val_split) + ")");
    const int64_t batch = std::min<int64_t>(config.batch_size, static_cast<int64_t>(in.split.train.size()));
    in.recompute = std::make_unique<data::Loader>(in.sets.train, in.split.train,
                                                  recompute_loader_options(batch, config.augment, config.seed, device));
  }
  return in;
}

int64_t evaluated_images(const EvalConfig& config, const EvalInputs& in) {
  if (config.split == "test") return in.sets.test.count;
  return static_cast<int64_t>((config.split == "val" ? in.split.val : in.split.train).size());
}

Predictions predict_split(nn::Module& model, const EvalConfig& config, const EvalInputs& in, Device device) {
  if (config.split == "test") return predict(model, in.sets.test, {}, 500, device);
  return predict(model, in.sets.train, config.split == "val" ? in.split.val : in.split.train, 500, device);
}

void print_plan(FILE* out, const EvalConfig& config, const EvalInputs& in) {
  std::fprintf(out, "eval: %s %s (%lld images, %d classes)", config.dataset.c_str(), config.split.c_str(),
               static_cast<long long>(evaluated_images(config, in)), in.classes);
  if (config.val_split > 0)
    std::fprintf(out, "; temperature fitted on the validation split (%zu images, --val-split %g --seed %llu)",
                 in.split.val.size(), config.val_split, static_cast<unsigned long long>(config.seed));
  else
    std::fprintf(out, "; temperature scaling skipped (no --val-split)");
  if (in.recompute)
    std::fprintf(out, "; BN recomputed on %s training batches of %lld",
                 config.bn_recompute_batches ? std::to_string(config.bn_recompute_batches).c_str() : "all",
                 static_cast<long long>(in.recompute->options().batch_size));
  std::fprintf(out, "\n");
}

// The weights --ema asks for in checkpoint `m`, "all" expanded, each once, in order.
std::vector<std::string> weights_to_evaluate(const EvalConfig& config, const CheckpointModel& m) {
  std::vector<std::string> weights;
  const auto add = [&weights](const std::string& w) {
    if (std::find(weights.begin(), weights.end(), w) == weights.end()) weights.push_back(w);
  };
  for (const std::string& w : config.weights) {
    if (w != "all") {
      add(w);
      continue;
    }
    add("sgd");
    for (const std::string& a : checkpoint_averages(m.file)) add(a);
  }
  return weights;
}

// The metrics of the model as loaded (after the recompute, when asked for), and after
// temperature scaling fitted on the validation split when there is one.
Row evaluate_model(CheckpointModel& m, const std::string& path, const std::string& weights, const EvalConfig& config,
                   EvalInputs& in, Device device) {
  if (in.recompute) {
    in.recompute->start_epoch(0);  // every model sees the same batches
    recompute_bn_on(*m.model, *in.recompute, config.bn_recompute_batches);
  }
  Row r{path, m.architecture, weights, in.recompute ? "recomputed" : "running", predict_split(*m.model, config, in, device)};
  r.accuracy = top1_accuracy(r.predictions);
  r.loss = mean_nll(r.predictions);
  r.ece = ece_equal_mass(r.predictions);
  r.ece15 = ece_equal_width(r.predictions);
  if (config.val_split > 0) {
    const TemperatureFit fit = fit_temperature(
        config.split == "val" ? r.predictions : predict(*m.model, in.sets.train, in.split.val, 500, device));
    r.calibrated = true;
    r.temperature = fit.temperature;
    r.loss_t = nll(r.predictions, fit.temperature);
    r.ece_t = ece_equal_mass(r.predictions, 100, fit.temperature);
    r.ece15_t = ece_equal_width(r.predictions, 15, fit.temperature);
  }
  return r;
}

void print_rows(FILE* out, const std::vector<Row>& rows, bool calibrated) {
  size_t width = 10, wwidth = 5;
  for (const Row& r : rows) {
    width = std::max(width, r.checkpoint.size());
    wwidth = std::max(wwidth, r.weights.size());
  }
  std::fprintf(out, "%3s  %-*s  %-*s  %-10s  %-10s %7s %8s %7s %7s", "#", static_cast<int>(width), "checkpoint",
               static_cast<int>(wwidth), "model", "arch", "bn", "acc%", "nll", "ece%", "ece15%");
  if (calibrated) std::fprintf(out, "  | %7s %8s %7s %8s", "T", "nll(T)", "ece%(T)", "ece15(T)");
  std::fprintf(out, "\n");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::fprintf(out, "%3zu  %-*s  %-*s  %-10s  %-10s %7.2f %8.4f %7.2f %7.2f", i + 1, static_cast<int>(width),
                 r.checkpoint.c_str(), static_cast<int>(wwidth), r.weights.c_str(), r.architecture.c_str(), r.bn.c_str(),
                 r.accuracy, r.loss, r.ece, r.ece15);
    if (r.calibrated) std::fprintf(out, "  | %7.3f %8.4f %7.2f %8.2f", r.temperature, r.loss_t, r.ece_t, r.ece15_t);
    std::fprintf(out, "\n");
  }
}

// Every pair's churn and Jensen-Shannon divergence, printed and returned as JSON.
json compare_pairs(FILE* out, const std::vector<Row>& rows) {
  json pairs = json::array();
  if (rows.size() < 2) return pairs;
  std::fprintf(out, "pairs (raw predictions):\n%3s %3s %8s %10s\n", "a", "b", "churn%", "JS (nats)");
  for (size_t a = 0; a < rows.size(); ++a)
    for (size_t b = a + 1; b < rows.size(); ++b) {
      const double c = churn(rows[a].predictions, rows[b].predictions);
      const double js = js_divergence(rows[a].predictions, rows[b].predictions);
      std::fprintf(out, "%3zu %3zu %8.2f %10.6f\n", a + 1, b + 1, c, js);
      pairs.push_back({{"a", a}, {"b", b}, {"churn", c}, {"js", js}});
    }
  return pairs;
}

json results_json(const EvalConfig& config, const EvalInputs& in, const std::vector<Row>& rows, json pairs) {
  json doc = {{"dataset", config.dataset}, {"data", config.data_dir}, {"split", config.split},
              {"images", evaluated_images(config, in)}, {"classes", in.classes}, {"train_subset", config.train_subset},
              {"test_subset", config.test_subset},
              {"bn_recompute", in.recompute ? json{{"batches", config.bn_recompute_batches},
                                                   {"batch_size", in.recompute->options().batch_size},
                                                   {"augment", config.augment}}
                                            : json(nullptr)}};
  doc["temperature_scaling"] = config.val_split > 0 ? json{{"fitted_on", "val"}, {"val_split", config.val_split},
                                                           {"seed", config.seed}, {"images", in.split.val.size()}}
                                                    : json{{"skipped", "no --val-split"}};
  doc["models"] = json::array();
  for (const Row& r : rows) doc["models"].push_back(row_json(r));
  doc["pairs"] = std::move(pairs);
  return doc;
}

}  // namespace

int run_eval(EvalConfig config) {
  const json results = evaluate_checkpoints(config);
  if (!config.json.empty()) write_output("--json", config.json, results.dump(2) + "\n");
  return 0;
}

json evaluate_checkpoints(EvalConfig config) {
  const Device device = start_app(config);
  FILE* out = table_stream(config.json);
  EvalInputs in = load_inputs(config, device);
  print_plan(out, config, in);
  std::vector<Row> rows;
  for (const std::string& path : config.checkpoints) {
    CheckpointModel m = load_checkpoint_model(path, config.model, in.classes, device);
    for (const std::string& w : weights_to_evaluate(config, m)) {
      load_weights(m, w);
      rows.push_back(evaluate_model(m, path, w, config, in, device));
    }
  }
  print_rows(out, rows, config.val_split > 0);
  json pairs = compare_pairs(out, rows);
  return results_json(config, in, rows, std::move(pairs));
}

}  // namespace polyak::app
