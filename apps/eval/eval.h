// The eval app: evaluates checkpoints on a dataset split with the paper's metrics.
//
// For every checkpoint and every set of weights asked for (--ema: the checkpoint's own
// weights "sgd" and/or the averages a training checkpoint holds), optionally after
// recomputing the BatchNorm statistics on training batches (--bn-recompute on):
//   accuracy (top-1, %), loss (NLL, nats), ece (100 equal-mass bins, %), ece15 (15
//   equal-width bins, %); then the same after temperature scaling, with T fitted on
//   the validation split (--val-split F --seed S [--train-subset N] reproduce the
//   train app's split exactly: same subset of the training images, then
//   data::train_val_split). Without a validation split temperature scaling is skipped.
// For two or more evaluated models, every pair's churn (% of images whose argmax
// differs) and mean Jensen-Shannon divergence of their softmax outputs (nats), on the
// raw (not temperature-scaled) predictions.
// Output: a table on stdout, and with --json FILE (or "-" for stdout, the table then
// going to stderr) the same as one JSON object.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace polyak::app {

struct EvalConfig {
  std::vector<std::string> checkpoints;
  std::string model;                  // "" = from each checkpoint's metadata
  std::vector<std::string> weights = {"sgd"};  // --ema: sgd, ema names, or all
  std::string dataset = "cifar10";
  std::string data_dir;               // "" = default_data_dir(dataset)
  std::string split = "test";         // test, val or train (the train part of the split)
  double val_split = 0.0;
  uint64_t seed = 0;
  int64_t train_subset = 0;           // as the train app's: the first N training images
  int64_t test_subset = 0;
  std::string bn_recompute = "off";   // on: recompute BN statistics before evaluating
  int64_t bn_recompute_batches = 0;   // 0: one pass over the training split
  int64_t batch_size = 128;           // of the recompute batches
  bool augment = true;                // recompute batches cropped and flipped, as in training
  std::string json;                   // "" none, "-" stdout, else a file
  std::string device = "cpu";
  int threads = 0;

  void validate() const;  // throws std::invalid_argument naming the flag and value
};

void add_eval_flags(CLI::App& app, EvalConfig& config);

// Returns the process exit code; throws std::invalid_argument, data::DataError or
// io::SafetensorsError for bad input.
int run_eval(EvalConfig config);
// The evaluation of run_eval (its table printed as run_eval prints it), returning the
// document that run_eval writes to --json, for callers that use the numbers.
nlohmann::ordered_json evaluate_checkpoints(EvalConfig config);

}  // namespace polyak::app
