// train: the research binary. Trains a model of the zoo on CIFAR-10/100 or an image
// folder and writes a run folder:
//   config.json        every setting, resolved
//   metrics.jsonl      one JSON object per epoch and evaluated model/split
//   init.safetensors   the weights before the first step (model only)
//   last.safetensors   the latest training checkpoint (model + state for --resume)
//   model.safetensors  the final weights (model only), when training completes
// Exit codes: 0 done, 2 bad flags or input data, 3 training diverged, 1 other errors.
#include <CLI/CLI.hpp>

#include "apps/common/cli.h"
#include "apps/train/config.h"
#include "apps/train/trainer.h"

int main(int argc, char** argv) {
  using namespace polyak::app;
  CLI::App app{"polyak train: train a network on CIFAR or an image folder"};
  app.set_config();  // no config files: every setting is a flag
  TrainConfig config;
  add_train_flags(app, config);
  return run_app("train", app, argc, argv, [&] { return run_training(config); });
}
