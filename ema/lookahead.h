// Lookahead: an exponential moving average of the weights that is copied back into the
// model at each of its updates (Zhang et al., "Lookahead Optimizer: k steps forward, 1
// step back", 2019), as airbench94 uses it. Every k optimiser steps,
//   slow <- decay slow + (1 - decay) fast,    fast <- slow,
// where fast are the live weights (parameters and float buffers: BN statistics too) and
// slow starts as the weights at the first update. Unlike the EmaSet's averages, which
// never feed back, the average here is where training goes on from: the optimiser's
// next k steps explore ahead of it, and the update pulls them back part of the way.
// The caller chooses each update's decay (airbench94 raises it over the run); decay 1
// copies the average into the model unchanged.
#pragma once

#include "engine/nn/module.h"

namespace polyak::ema {

class Lookahead {
 public:
  // The model's arenas must be packed; the average starts as its current weights.
  explicit Lookahead(nn::Module& model);

  // One update with `decay` in [0, 1]: the average moves towards the live weights and
  // the live weights become the average (bit for bit).
  void update(float decay);

  const Tensor& parameters() const { return params_; }
  const Tensor& buffers() const { return buffers_; }

 private:
  nn::Module& model_;
  Tensor params_, buffers_;
};

}  // namespace polyak::ema
