// train: the research binary. Trains a model of the zoo on CIFAR-10/100 or an image
// folder and writes a run folder:
//   config.json        every setting, resolved
//   metrics.jsonl      one JSON object per epoch and evaluated model/split
//   init.safetensors   the weights before the first step (model only)
//   last.safetensors   the latest training checkpoint (model + state for --resume),
//                      written at each epoch's end and every --save-every steps
//   model.safetensors  the final weights (model only), when training completes
// With --seeds 0,1,2 it trains once per seed into OUTPUT/seed<s> and aggregates them
// (apps/train/seeds.h). Every file is replaced atomically, so a run killed at any moment resumes from the last
// complete checkpoint (--resume <run>/last.safetensors) to the same result, bit for bit.
// Exit codes: 0 done, 2 bad flags or input data (or an output folder that cannot be
// written), 3 training diverged (a non-finite loss, gradient or weight; see
// --on-nonfinite), 1 other errors (e.g. a disk that fills up: the message names the
// file, and the previous checkpoint stays intact).
#include <CLI/CLI.hpp>

#include "apps/common/cli.h"
#include "apps/train/config.h"
#include "apps/train/seeds.h"
#include "apps/train/trainer.h"

int main(int argc, char** argv) {
  using namespace polyak::app;
  CLI::App app{"polyak train: train a network on CIFAR or an image folder"};
  app.set_config();  // no config files: every setting is a flag
  TrainConfig config;
  add_train_flags(app, config);
  return run_app("train", app, argc, argv, [&] { return config.seeds.empty() ? run_training(config) : run_seeds(config); });
}
