// airbench94's training recipe (Keller Jordan's CIFAR-10 speedrun, 94% in 3.8 s on an
// A100; github.com/KellerJordan/cifar10-airbench, airbench94.py) on polyak's engine: the
// network is models/airbench.cpp, its first layer models/whitening.h, the Lookahead
// ema/lookahead.h, the test-time augmentation apps/common/tta.h.
//
// Hyperparameters are the recipe's, in its decoupled form. With momentum m and batch b,
// kilostep = 1024 (1 + 1 / (1 - m)) is how much larger a Nesterov step is than one
// example's gradient when gradients are constant, and PyTorch's SGD receives
//   lr_sgd = lr / kilostep,  weight_decay_sgd = weight_decay b / kilostep / lr_sgd,
// with the loss summed (not averaged) over the batch. The BatchNorm biases step 64x
// faster (bias_scaler) at the same absolute decay; BatchNorm weights stay 1; the
// whitening filters never train and their bias trains for whiten_bias_epochs epochs.
#pragma once

#include <cstdint>
#include <vector>

#include "data/cifar.h"
#include "engine/nn/module.h"
#include "engine/optim/sgd.h"

namespace polyak::app {

struct AirbenchRecipe {
  double epochs = 9.9;
  int64_t batch_size = 1024;
  double lr = 11.5;              // per 1024 examples
  double momentum = 0.85;        // Nesterov
  double weight_decay = 0.0153;  // per 1024 examples, decoupled from the lr
  double bias_scaler = 64;
  float label_smoothing = 0.2f;
  int64_t whiten_bias_epochs = 3;
  // Lookahead from epoch lookahead_start_epoch on, every lookahead_every steps, with
  // decay base^every (step / total)^power; decay 1 (the average copied back) at each
  // epoch's end.
  bool lookahead = true;  // false: the ablation, plain SGD throughout
  int64_t lookahead_start_epoch = 3, lookahead_every = 5;
  double lookahead_decay_base = 0.95, lookahead_decay_power = 3;
  // Linear warm-up from start to 1 over the first peak share of the steps, then down to end.
  double schedule_start = 0.2, schedule_peak = 0.23, schedule_end = 0.07;
  int translate = 2;  // pixels, with reflect padding; flips alternate (data/augment.h)
  int64_t whitening_images = 5000;
  double whitening_eps = 5e-4;
  int tta_level = 2;
};

// Optimiser steps of a run: ceil(batches per epoch x epochs), batches without the last
// partial one.
int64_t total_steps(const AirbenchRecipe& recipe, int64_t train_images);
// The learning rate's factor at step `step` (0-based) of `total`: the recipe's triangle.
double triangle_factor(const AirbenchRecipe& recipe, int64_t step, int64_t total);
// The Lookahead decay after step `step` (1-based) of `total`.
double lookahead_decay(const AirbenchRecipe& recipe, int64_t step, int64_t total);

// The SGD settings and parameter groups of the recipe for the airbench94 model (by its
// parameter names), with the whitening bias trained or frozen: frozen parameters (the
// whitening filters, the BatchNorm weights) get a learning-rate factor 0.
SgdOptions airbench_sgd_options(const AirbenchRecipe& recipe);
std::vector<SgdGroup> airbench_sgd_groups(const AirbenchRecipe& recipe, const nn::Module& model,
                                          bool train_whitening_bias);
// Marks the frozen parameters as not requiring gradients, so that the backward pass
// skips them: once the whitening bias is frozen too, the first layer's whole backward
// and the second's data gradient.
void set_trainable(nn::Module& model, bool train_whitening_bias);

struct EpochRecord {
  int64_t epoch = 0, steps = 0;
  double seconds = 0, last_batch_loss = 0, last_batch_accuracy = 0;  // loss per image
  double data_wait_seconds = 0;  // of `seconds`, waiting for the loader's next batch
};

struct SpeedrunResult {
  double accuracy = 0;  // test top-1 (percent) with TTA at recipe.tta_level
  double accuracy_without_tta = 0;  // the same model on the test images alone (untimed)
  double whitening_seconds = 0, training_seconds = 0, tta_seconds = 0;
  double seconds() const { return whitening_seconds + training_seconds + tta_seconds; }
  std::vector<EpochRecord> epochs;
};

// Trains airbench94 from `seed` on `train` and evaluates it on `test`, printing a line
// per epoch. Timed as the recipe times itself: the whitening initialisation, the
// training epochs (with their data pipeline) and the TTA evaluation; the accuracy
// without TTA is measured after the clock stops.
SpeedrunResult run_airbench(const AirbenchRecipe& recipe, const data::ImageSet& train, const data::ImageSet& test,
                            uint64_t seed, Device device);

}  // namespace polyak::app
