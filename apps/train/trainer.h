// The training loop of the train app.
#pragma once

#include <stdexcept>

#include "apps/train/config.h"

namespace polyak::app {

// A non-finite loss: the message names the step, the learning rate and the last good
// checkpoint; nothing is saved after it.
struct TrainingDiverged : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs (or resumes) the training `config` describes; returns the process exit code.
int run_training(TrainConfig config);

}  // namespace polyak::app
