// speedrun: airbench94's recipe (apps/speedrun/recipe.h) on CIFAR-10, timed, once per
// seed: the time to 94% on this machine. Writes, in --output:
//   run<seed>.json   the run: test accuracy with TTA (and without), the timed phases, every epoch
//   summary.json     every run's accuracy and time, their mean and standard deviation
// and prints one line per epoch and a table at the end. Exit codes as every app
// (apps/common/cli.h).
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "apps/common/cli.h"
#include "apps/common/datasets.h"
#include "apps/common/tta.h"
#include "apps/speedrun/recipe.h"
#include "engine/io/atomic_file.h"
#include "engine/parallel.h"

namespace polyak::app {
namespace {

struct SpeedrunConfig {
  std::string data, output = "runs/airbench94", device = "cpu";
  int64_t runs = 5, train_subset = 0, test_subset = 0;
  uint64_t seed = 0;
  int threads = 0;
  AirbenchRecipe recipe;
};

void add_flags(CLI::App& app, SpeedrunConfig& c) {
  app.add_option("--data", c.data, "CIFAR-10 folder (default: $POLYAK_DATA/cifar10 or ../shared/data/cifar10)");
  app.add_option("--output", c.output, "folder for run<seed>.json and summary.json");
  app.add_option("--runs", c.runs, "runs, with seeds --seed, --seed + 1, ...");
  app.add_option("--seed", c.seed, "the first run's seed");
  app.add_option("--threads", c.threads, "CPU threads (default: all cores)");
  app.add_option("--device", c.device, "cpu or cuda");
  app.add_option("--batch-size", c.recipe.batch_size,
                 "images per step (the recipe's 1024; its lr and decay are per 1024 examples, the loss is summed)");
  app.add_option("--epochs", c.recipe.epochs, "training epochs (the recipe's 9.9; fractions end mid-epoch)");
  app.add_option("--lookahead", c.recipe.lookahead, "Lookahead on (the recipe) or off (the ablation)");
  app.add_option("--tta", c.recipe.tta_level, "test-time augmentation: 0 none, 1 mirror, 2 mirror and translations");
  app.add_option("--train-subset", c.train_subset, "train on the first N images only (for tests; 0: all)");
  app.add_option("--test-subset", c.test_subset, "evaluate on the first N test images only (0: all)");
}

void validate(const SpeedrunConfig& c) {
  if (c.runs < 1 || c.runs > 1000) bad_flag("--runs", std::to_string(c.runs), "an integer from 1 to 1000");
  if (c.threads < 0 || c.threads > 1024) bad_flag("--threads", std::to_string(c.threads), "an integer from 1 to 1024 (0: all cores)");
  if (c.recipe.batch_size < 1 || c.recipe.batch_size > 65536)
    bad_flag("--batch-size", std::to_string(c.recipe.batch_size), "an integer from 1 to 65536");
  if (!(c.recipe.epochs > 0 && c.recipe.epochs <= 1000))
    bad_flag("--epochs", number_str(c.recipe.epochs), "a number of epochs above 0, at most 1000");
  if (c.recipe.tta_level < 0 || c.recipe.tta_level > kMaxTtaLevel)
    bad_flag("--tta", std::to_string(c.recipe.tta_level), "0, 1 or 2");
  if (c.train_subset < 0) bad_flag("--train-subset", std::to_string(c.train_subset), "a count >= 0");
  if (c.test_subset < 0) bad_flag("--test-subset", std::to_string(c.test_subset), "a count >= 0");
}

nlohmann::ordered_json run_json(uint64_t seed, bool lookahead, const SpeedrunResult& r) {
  nlohmann::ordered_json epochs = nlohmann::ordered_json::array();
  for (const EpochRecord& e : r.epochs)
    epochs.push_back({{"epoch", e.epoch}, {"steps", e.steps}, {"seconds", e.seconds},
                      {"last_batch_loss", e.last_batch_loss}, {"last_batch_accuracy", e.last_batch_accuracy},
                      {"data_wait_seconds", e.data_wait_seconds}});
  return {{"seed", seed},
          {"lookahead", lookahead},
          {"accuracy", r.accuracy},
          {"accuracy_without_tta", r.accuracy_without_tta},
          {"seconds", r.seconds()},
          {"whitening_seconds", r.whitening_seconds},
          {"training_seconds", r.training_seconds},
          {"tta_seconds", r.tta_seconds},
          {"epochs", epochs}};
}

// Mean and sample standard deviation.
std::pair<double, double> mean_std(const std::vector<double>& v) {
  double mean = 0, squares = 0;
  for (double x : v) mean += x / static_cast<double>(v.size());
  for (double x : v) squares += (x - mean) * (x - mean);
  return {mean, v.size() > 1 ? std::sqrt(squares / static_cast<double>(v.size() - 1)) : 0.0};
}

int run(SpeedrunConfig c) {
  validate(c);
  const Device device = device_from_flag(c.device);
  if (c.threads) set_num_threads(c.threads);
  prepare_output_folder("--output", c.output);
  const auto load_start = std::chrono::steady_clock::now();
  Datasets sets = load_datasets("cifar10", c.data.empty() ? default_data_dir("cifar10") : c.data);
  keep_first(sets.train, c.train_subset);
  keep_first(sets.test, c.test_subset);
  if (sets.train.count < c.recipe.batch_size)
    throw std::invalid_argument("--train-subset " + std::to_string(sets.train.count) + ": the recipe needs at least one batch of " +
                                std::to_string(c.recipe.batch_size) + " images");
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  std::printf("airbench94 recipe: %lld train / %lld test images (read in %.1f s), %lld steps of %lld, TTA level %d, "
              "%d threads -> %s\n",
              static_cast<long long>(sets.train.count), static_cast<long long>(sets.test.count), load_seconds,
              static_cast<long long>(total_steps(c.recipe, sets.train.count)), static_cast<long long>(c.recipe.batch_size),
              c.recipe.tta_level, num_threads(), c.output.c_str());
  nlohmann::ordered_json runs = nlohmann::ordered_json::array();
  std::vector<double> accuracies, times;
  for (int64_t k = 0; k < c.runs; ++k) {
    const uint64_t seed = c.seed + static_cast<uint64_t>(k);
    std::printf("run %lld/%lld, seed %llu\n", static_cast<long long>(k + 1), static_cast<long long>(c.runs),
                static_cast<unsigned long long>(seed));
    const SpeedrunResult r = run_airbench(c.recipe, sets.train, sets.test, seed, device);
    std::printf("seed %llu: test accuracy %.2f%% (TTA %d; %.2f%% without) in %.1f s (whitening %.1f, training %.1f, TTA %.1f)\n",
                static_cast<unsigned long long>(seed), r.accuracy, c.recipe.tta_level, r.accuracy_without_tta, r.seconds(),
                r.whitening_seconds, r.training_seconds, r.tta_seconds);
    const nlohmann::ordered_json row = run_json(seed, c.recipe.lookahead, r);
    io::write_file_atomically((std::filesystem::path(c.output) / ("run" + std::to_string(seed) + ".json")).string(),
                              row.dump(2) + "\n");
    runs.push_back(row);
    accuracies.push_back(r.accuracy);
    times.push_back(r.seconds());
  }
  const auto [accuracy, accuracy_std] = mean_std(accuracies);
  const auto [seconds, seconds_std] = mean_std(times);
  const nlohmann::ordered_json summary = {{"recipe", "airbench94"},       {"lookahead", c.recipe.lookahead},
                                          {"threads", num_threads()},
                                          {"device", c.device},           {"runs", runs},
                                          {"accuracy_mean", accuracy},    {"accuracy_std", accuracy_std},
                                          {"seconds_mean", seconds},      {"seconds_std", seconds_std},
                                          {"data_read_seconds", load_seconds}};
  io::write_file_atomically((std::filesystem::path(c.output) / "summary.json").string(), summary.dump(2) + "\n");
  std::printf("%lld run(s): test accuracy %.2f%% +- %.2f, time %.1f s +- %.1f\n", static_cast<long long>(c.runs), accuracy,
              accuracy_std, seconds, seconds_std);
  return 0;
}

}  // namespace
}  // namespace polyak::app

int main(int argc, char** argv) {
  using namespace polyak::app;
  CLI::App app{"polyak speedrun: airbench94's recipe on CIFAR-10, timed"};
  app.set_config();
  SpeedrunConfig config;
  add_flags(app, config);
  return run_app("speedrun", app, argc, argv, [&] { return run(config); });
}
