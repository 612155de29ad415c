// Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay,
// with torch.optim.SGD's exact semantics. For each parameter p with gradient g:
//   d = g + weight_decay * p
//   b = d                                  on the first step
//   b = momentum * b + (1 - dampening) * d  afterwards
//   d = d + momentum * b  (Nesterov)   or   d = b  (classical)
//   p = p - lr * d
// It works on a model's flat arenas, so a step is one fused pass over memory.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace polyak {

namespace nn {
class Module;
}

// A run [begin, end) of the flat arena with its own learning-rate factor and weight
// decay: PyTorch's parameter groups, for parameters that are contiguous in the arena
// (one parameter is). lr_scale 0 and weight_decay 0 freeze the run: its values never
// change (p - 0 * d = p), as a parameter with requires_grad=False.
struct SgdGroup {
  int64_t begin = 0, end = 0;
  float lr_scale = 1.0f;  // this run's learning rate is options().lr * lr_scale
  float weight_decay = 0.0f;
};

struct SgdOptions {
  float lr = 0.1f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  float weight_decay = 0.0f;
  bool nesterov = false;
};

class Sgd {
 public:
  // The model's arenas must be packed (nn::Module::pack_arenas).
  Sgd(const nn::Module& model, SgdOptions options);
  // Flat parameter and gradient tensors of the same size.
  Sgd(Tensor params, Tensor grads, SgdOptions options);

  // One update at the current options().lr.
  void step();

  // Runs of the arena that step with their own factor and decay; the rest of the
  // arena steps with options(). Throws std::invalid_argument for runs outside the arena
  // or overlapping. An empty list: the whole arena with options() (the default).
  void set_groups(std::vector<SgdGroup> groups);
  const std::vector<SgdGroup>& groups() const { return groups_; }

  SgdOptions& options() { return options_; }
  const SgdOptions& options() const { return options_; }
  // The optimiser's state, for checkpoints: the momentum buffer (meaningful once
  // steps_taken() > 0) and the number of steps taken.
  const Tensor& momentum_buffer() const { return momentum_buffer_; }
  int64_t steps_taken() const { return steps_; }
  void load_state(const Tensor& momentum_buffer, int64_t steps_taken);

 private:
  Tensor params_, grads_, momentum_buffer_;
  SgdOptions options_;
  std::vector<SgdGroup> groups_;  // sorted by begin
  int64_t steps_ = 0;
};

}  // namespace polyak
