// The whole --resume path of the train app up to the first batch: the training
// checkpoint is read (the input is the file), its configuration is resolved and
// validated, a model and optimiser are built as run_training builds them, and
// restore_run loads the weights, the momentum, the averages, the counters and the
// model selection and checks them against the run. Through run_app, as the app runs
// it: a bad checkpoint must end with exit code 2 and a message, never a crash, an
// escaping exception or exit code 1.
//
// Only tiny_cnn checkpoints on CIFAR (the seeds, written by the train app) are restored
// (another model takes seconds to build); the counters are checked against the
// batches per epoch the app would have: the training images (50,000, or
// --train-subset) less the validation split, in batches of --batch-size.
#include <CLI/CLI.hpp>

#include <cmath>
#include <optional>

#include "apps/common/cli.h"
#include "apps/train/resume.h"
#include "fuzz_support.h"
#include "models/registry.h"

using namespace polyak;

namespace {

int64_t batches_per_epoch(const app::TrainConfig& config) {
  const int64_t all = config.train_subset > 0 && config.train_subset < 50000 ? config.train_subset : 50000;
  const int64_t train = all - std::llround(static_cast<double>(all) * config.val_split);
  return (train + config.batch_size - 1) / config.batch_size;
}

int resume(const std::string& path) {
  app::TrainConfig given;
  given.resume = path;
  const io::SafetensorsFile file = app::read_resumed_checkpoint(path);
  app::TrainConfig config = app::resumed_config(given, file);
  config.resolve();
  config.validate();
  if (config.model != "tiny_cnn" || config.dataset == "folder" || config.device != "cpu") return 0;
  Rng rng(config.seed);
  const auto model = models::create_model(config.model, config.dataset == "cifar100" ? 100 : 10, rng);
  model->pack_arenas();
  Sgd sgd(*model, {.lr = config.lr, .momentum = config.momentum, .weight_decay = config.weight_decay,
                   .nesterov = config.nesterov});
  const int64_t steps_per_epoch = batches_per_epoch(config);
  std::optional<ema::EmaSet> averages;
  if (const auto options = config.ema_options(config.epochs * steps_per_epoch)) averages.emplace(*model, *options);
  const app::Resumed resumed =
      app::restore_run(file, config, steps_per_epoch, *model, sgd, averages ? &*averages : nullptr);
  fuzz::require(resumed.state.step == resumed.state.epoch * steps_per_epoch + resumed.state.loader.next_batch,
                "a restored run stands where its loader does");
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = (fuzz::scratch_dir() / "last.safetensors").string();
  fuzz::write_file(path, data, size);
  CLI::App app{"train --resume"};
  char program[] = "train";
  char* argv[] = {program, nullptr};
  const int code = app::run_app("train", app, 1, argv, [&] { return resume(path); });
  fuzz::require(code == 0 || code == 2, "a checkpoint is restored (0) or refused as bad input (2)");
  return 0;
}
