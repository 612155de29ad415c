#include "engine/optim/sgd.h"

#include <stdexcept>

#include "engine/backend.h"
#include "engine/nn/module.h"

namespace polyak {

Sgd::Sgd(const nn::Module& model, SgdOptions options)
    : Sgd(model.parameter_arena(), model.gradient_arena(), options) {}

Sgd::Sgd(Tensor params, Tensor grads, SgdOptions options)
    : params_(std::move(params)), grads_(std::move(grads)), options_(options) {
  if (options_.nesterov && (options_.momentum <= 0.0f || options_.dampening != 0.0f))
    throw std::invalid_argument("SGD: Nesterov momentum needs momentum > 0 and dampening 0");
  if (params_.shape() != grads_.shape() || params_.dim() != 1 || !params_.is_contiguous() || !grads_.is_contiguous())
    throw std::invalid_argument("SGD: parameters and gradients must be flat contiguous tensors of one size");
  momentum_buffer_ = Tensor::zeros(params_.shape(), DType::F32, params_.device());
}

void Sgd::step() {
  const SgdOptions& o = options_;
  const SgdHyper hyper{o.lr, o.momentum, o.dampening, o.weight_decay, o.nesterov, steps_ == 0};
  kernels(params_.device())
      .sgd_step(hyper, params_.numel(), params_.data<float>(), grads_.data<float>(), momentum_buffer_.data<float>());
  ++steps_;
}

void Sgd::load_state(const Tensor& momentum_buffer, int64_t steps_taken) {
  if (momentum_buffer.shape() != momentum_buffer_.shape())
    throw std::invalid_argument("SGD state: momentum buffer of shape " + shape_str(momentum_buffer.shape()) +
                                " does not fit parameters of shape " + shape_str(momentum_buffer_.shape()));
  if (steps_taken < 0) throw std::invalid_argument("SGD state: negative step count");
  momentum_buffer_.copy_(momentum_buffer);
  steps_ = steps_taken;
}

}  // namespace polyak
