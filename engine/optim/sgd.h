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

#include "engine/tensor.h"

namespace polyak {

namespace nn {
class Module;
}

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
  int64_t steps_ = 0;
};

}  // namespace polyak
