// Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay,
// with torch.optim.SGD's exact semantics. For each parameter p with gradient g:
//   d = g + weight_decay * p
//   b = d                                  on the first step
//   b = momentum * b + (1 - dampening) * d  afterwards
//   d = d + momentum * b  (Nesterov)   or   d = b  (classical)
//   p = p - lr * d
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace polyak {

struct SgdOptions {
  float lr = 0.1f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  float weight_decay = 0.0f;
  bool nesterov = false;
};

class Sgd {
 public:
  Sgd(std::vector<Tensor> params, SgdOptions options);

  // One update of every parameter that has a gradient, at the current options.lr.
  void step();
  void zero_grad();

  SgdOptions& options() { return options_; }
  const std::vector<Tensor>& momentum_buffers() const { return buffers_; }

 private:
  std::vector<Tensor> params_;
  std::vector<Tensor> buffers_;  // undefined until the first step
  SgdOptions options_;
};

}  // namespace polyak
