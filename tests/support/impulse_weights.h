// A model of steps + 1 weights whose live weights are one-hot(s) at step s (and
// one-hot(0) to begin with): any average of the run then holds, element by element, the
// weight its profile gives each step (ema/power_profile.h). The test of tracking and
// the test of reconstruction both stand on it.
#pragma once

#include <cstdint>

#include "engine/nn/layers.h"
#include "engine/rng.h"

namespace polyak::testing {

class ImpulseWeights {
 public:
  explicit ImpulseWeights(int64_t steps) : rng_(0), net_(steps + 1, 1, rng_, false) {
    net_.pack_arenas();
    at_step(0);
  }
  nn::Module& model() { return net_; }
  void at_step(int64_t s) {
    Tensor live = net_.parameter_arena();
    live.fill_(0.0f);
    live.data<float>()[s] = 1.0f;
  }

 private:
  Rng rng_;
  nn::Linear net_;
};

}  // namespace polyak::testing
