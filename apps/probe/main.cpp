// probe: transfer by linear probe. Freezes the backbone of a checkpoint and trains a new
// linear head on a target dataset (the paper's defaults: 50 epochs, SGD Nesterov 0.9,
// lr 0.01, no weight decay). See apps/probe/probe.h.
//   probe runs/x/model.safetensors --dataset folder --data my_images --json probe.json
//   probe runs/x/last.safetensors --ema ema0.998 --output head.safetensors
// Exit codes: 0 done, 2 bad flags or input (files, data, checkpoints), 1 other errors.
#include <CLI/CLI.hpp>

#include "apps/common/cli.h"
#include "apps/probe/probe.h"

int main(int argc, char** argv) {
  using namespace polyak::app;
  CLI::App app{"polyak probe: linear probe of a frozen checkpoint backbone on a target dataset"};
  ProbeConfig config;
  add_probe_flags(app, config);
  return run_app("probe", app, argc, argv, [&] { return run_probe(config); });
}
