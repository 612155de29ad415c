// The training loop of the train app.
#pragma once

#include <string>

#include "apps/common/cli.h"

#include "apps/train/config.h"

namespace polyak::app {

// A non-finite loss or gradient (with --on-nonfinite stop, or after more than --max-skips
// skipped steps in a row) or a weight that an update made non-finite: the message names
// the step, the epoch, the learning rate, what was not finite (a parameter by its
// PyTorch name) and the last good checkpoint; nothing is saved after it. Every rank of
// a data-parallel job finds it at the same step (it is decided on the summed gradients
// and the weights, equal on every rank): an agreed error, printed once.
struct TrainingDiverged : AgreedError {
  explicit TrainingDiverged(const std::string& what) : AgreedError(what, 3) {}
};

// Runs (or resumes) the training `config` describes; returns the process exit code.
int run_training(TrainConfig config);

}  // namespace polyak::app
