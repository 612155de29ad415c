#include "apps/train/seeds.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "apps/common/checkpoint.h"
#include "apps/common/cli.h"
#include "apps/common/datasets.h"
#include "apps/common/evaluate.h"
#include "apps/common/metrics.h"
#include "apps/report/report.h"
#include "apps/train/trainer.h"
#include "data/split.h"
#include "engine/distributed.h"
#include "engine/io/atomic_file.h"
#include "models/registry.h"

namespace polyak::app {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string seeds_root(const TrainConfig& config) {
  return config.output.empty() ? "runs/" + config.model + "_" + config.dataset + "_seeds" : config.output;
}

// One seed's run: trained fresh, resumed from its checkpoint, or skipped when complete.
// Returns the exit code of its training (0 when skipped).
int train_seed(const TrainConfig& config, uint64_t seed, const fs::path& dir) {
  if (fs::exists(dir / "model.safetensors")) {
    std::printf("seed %llu: complete in %s\n", static_cast<unsigned long long>(seed), dir.string().c_str());
    return 0;
  }
  TrainConfig one = config;
  one.seeds.clear();
  one.seed = seed;
  one.output = dir.string();
  if (fs::exists(dir / "last.safetensors")) {
    TrainConfig resume;  // the checkpoint holds the configuration
    resume.resume = (dir / "last.safetensors").string();
    resume.threads = config.threads;
    resume.save_every = config.save_every;
    resume.max_steps = config.max_steps;
    one = resume;
  }
  std::printf("seed %llu -> %s\n", static_cast<unsigned long long>(seed), dir.string().c_str());
  return run_training(one);
}

json summary(const std::vector<double>& values) {
  double sum = 0, squares = 0;
  for (double v : values) sum += v;
  const double mean = sum / static_cast<double>(values.size());
  for (double v : values) squares += (v - mean) * (v - mean);
  const double std = values.size() > 1 ? std::sqrt(squares / static_cast<double>(values.size() - 1)) : 0.0;
  return {{"mean", mean}, {"std", std}, {"values", values}};
}

json read_selection(const std::string& dir) {
  std::ifstream in(fs::path(dir) / "selection.json");
  const json selection = json::parse(in, nullptr, false);
  if (selection.is_discarded() || !selection.contains("reported"))
    throw std::invalid_argument(dir + "/selection.json: missing, or without the reported rows");
  return selection["reported"];
}

// A reported row's model in one seed: its test predictions and the per-seed numbers.
struct SeedRow {
  Predictions test;
  json numbers;
};

SeedRow evaluate_seed_row(const std::string& dir, const std::string& key, const json& row, nn::Module& model,
                          const Datasets& sets, const std::vector<int64_t>& val, Device device) {
  const std::string file = key == "sgd_final" ? "model.safetensors" : row.at("file").get<std::string>();
  load_model((fs::path(dir) / file).string(), model);
  SeedRow out;
  out.test = predict(model, sets.test, {}, 500, device);
  out.numbers = {{"model", row.value("model", "")}, {"epoch", row.value("epoch", json())},
                 {"accuracy", top1_accuracy(out.test)}, {"loss", mean_nll(out.test)},
                 {"ece", ece_equal_mass(out.test)}};
  if (!val.empty()) {
    const double t = fit_temperature(predict(model, sets.train, val, 500, device)).temperature;
    out.numbers["temperature"] = t;
    out.numbers["ece_ts"] = ece_equal_mass(out.test, 100, t);
  }
  return out;
}

// Churn and Jensen-Shannon divergence between every pair of seeds.
json pairwise(const std::vector<Predictions>& predictions) {
  std::vector<double> churns, js_nats, js_bits;
  for (size_t a = 0; a < predictions.size(); ++a)
    for (size_t b = a + 1; b < predictions.size(); ++b) {
      churns.push_back(churn(predictions[a], predictions[b]));
      js_nats.push_back(js_divergence(predictions[a], predictions[b]));
      js_bits.push_back(js_nats.back() / std::log(2.0));
    }
  if (churns.empty()) return json::object();
  return {{"churn", summary(churns)}, {"js_nats", summary(js_nats)}, {"js_bits", summary(js_bits)}};
}

}  // namespace

json aggregate_seeds(const std::vector<std::string>& run_dirs, const std::vector<uint64_t>& seeds,
                     const TrainConfig& config) {
  const Device device = device_from_flag(config.device);
  Datasets sets = load_datasets(config.dataset, config.data_dir);
  keep_first(sets.train, config.train_subset);
  keep_first(sets.test, config.test_subset);
  Rng unused(0);
  const auto model = models::create_model(config.model, sets.train.num_classes, unused);
  model->to(device);
  model->pack_arenas();
  std::vector<json> selections;
  for (const std::string& dir : run_dirs) selections.push_back(read_selection(dir));
  json rows = json::object();
  for (const auto& labelled : reported_row_labels()) {
    const std::string& key = labelled.first;  // (clang 14 cannot capture a structured binding)
    if (!std::all_of(selections.begin(), selections.end(), [&](const json& s) { return s.contains(key); })) continue;
    std::vector<Predictions> test;
    json per_seed = json::array();
    for (size_t i = 0; i < run_dirs.size(); ++i) {
      // Each seed's own validation split, drawn on the clean labels as the run drew it.
      const data::Split split = data::train_val_split(sets.train.labels, sets.train.num_classes, config.val_split, seeds[i]);
      SeedRow r = evaluate_seed_row(run_dirs[i], key, selections[i][key], *model, sets, split.val, device);
      test.push_back(std::move(r.test));
      per_seed.push_back(r.numbers);
    }
    json row = {{"label", labelled.second}, {"seeds", per_seed}};
    for (const char* metric : {"accuracy", "loss", "ece", "ece_ts"}) {
      std::vector<double> values;
      for (const json& s : per_seed)
        if (s.contains(metric)) values.push_back(s[metric].get<double>());
      if (values.size() == per_seed.size()) row[metric] = summary(values);
    }
    row.update(pairwise(test));
    rows[key] = row;
  }
  std::vector<std::string> names;  // the seed folders, relative to the seeds' root
  for (const std::string& dir : run_dirs) names.push_back(fs::path(dir).filename().string());
  return {{"runs", names}, {"seeds", seeds}, {"split", "test"}, {"rows", rows}};
}

std::string aggregate_table(const json& aggregate) {
  const auto cell = [](const json& row, const char* metric, int decimals) {
    if (!row.contains(metric)) return std::string("-");
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f ± %.*f", decimals, row[metric]["mean"].get<double>(), decimals,
                  row[metric]["std"].get<double>());
    return std::string(buf);
  };
  std::string text = "over " + std::to_string(aggregate["seeds"].size()) +
                     " seeds, test set (mean ± std; churn and JS between pairs of seeds):\n";
  char line[320];
  std::snprintf(line, sizeof line, "  %-15s %-16s %-16s %-14s %-14s %-16s %-18s\n", "row", "accuracy (%)", "loss",
                "ECE (%)", "ECE after TS", "churn (%)", "JS (bits)");
  text += line;
  for (const auto& [key, label] : reported_row_labels()) {
    if (!aggregate["rows"].contains(key)) continue;
    const json& row = aggregate["rows"][key];
    std::snprintf(line, sizeof line, "  %-15s %-16s %-16s %-14s %-14s %-16s %-18s\n", label.c_str(),
                  cell(row, "accuracy", 2).c_str(), cell(row, "loss", 4).c_str(), cell(row, "ece", 2).c_str(),
                  cell(row, "ece_ts", 2).c_str(), cell(row, "churn", 2).c_str(), cell(row, "js_bits", 4).c_str());
    text += line;
  }
  return text;
}

int run_seeds(const TrainConfig& config) {
  // Which seeds are done is read off the run folders, which under mpirun only rank 0
  // is sure to see when it matters; so a job trains one seed, and the aggregate comes
  // from a plain run that finds every seed complete.
  if (dist::world().size() > 1)
    throw AgreedError("--seeds under mpirun: train each seed as a job of its own (--seed S --output " +
                      seeds_root(config) + "/seed<S>), then run train --seeds without mpirun to "
                      "aggregate the completed seeds", 2);
  const fs::path root = seeds_root(config);
  prepare_output_folder("--output", root.string());
  std::vector<std::string> dirs;
  for (const uint64_t seed : config.seeds) {
    const fs::path dir = root / ("seed" + std::to_string(seed));
    if (const int code = train_seed(config, seed, dir); code != 0) return code;
    if (!fs::exists(dir / "model.safetensors")) {
      std::printf("seed %llu stopped before the end (--max-steps): no aggregate yet\n",
                  static_cast<unsigned long long>(seed));
      return 0;
    }
    dirs.push_back(dir.string());
  }
  TrainConfig resolved = config;
  resolved.resolve();
  const json aggregate = aggregate_seeds(dirs, config.seeds, resolved);
  io::write_file_atomically((root / "aggregate.json").string(), aggregate.dump(2) + "\n");
  std::printf("%s", aggregate_table(aggregate).c_str());
  const fs::path report = root / "report.html";
  write_report({root.string()}, report.string());
  std::printf("report: %s\n", report.string().c_str());
  return 0;
}

}  // namespace polyak::app
