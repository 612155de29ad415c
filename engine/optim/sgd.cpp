#include "engine/optim/sgd.h"

#include <algorithm>
#include <stdexcept>
#include <string>

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
  const Kernels& k = kernels(params_.device());
  const auto run = [&](int64_t begin, int64_t end, float lr, float weight_decay) {
    if (end <= begin) return;
    const SgdHyper hyper{lr, o.momentum, o.dampening, weight_decay, o.nesterov, steps_ == 0};
    k.sgd_step(hyper, end - begin, params_.data<float>() + begin, grads_.data<float>() + begin,
               momentum_buffer_.data<float>() + begin);
  };
  // The groups in arena order, and options() in the gaps between them.
  int64_t at = 0;
  for (const SgdGroup& g : groups_) {
    run(at, g.begin, o.lr, o.weight_decay);
    run(g.begin, g.end, o.lr * g.lr_scale, g.weight_decay);
    at = g.end;
  }
  run(at, params_.numel(), o.lr, o.weight_decay);
  ++steps_;
}

void Sgd::set_groups(std::vector<SgdGroup> groups) {
  std::sort(groups.begin(), groups.end(), [](const SgdGroup& a, const SgdGroup& b) { return a.begin < b.begin; });
  int64_t at = 0;
  for (const SgdGroup& g : groups) {
    if (g.begin < at || g.end < g.begin || g.end > params_.numel())
      throw std::invalid_argument("SGD group [" + std::to_string(g.begin) + ", " + std::to_string(g.end) +
                                  ") overlaps another or leaves the arena of " + std::to_string(params_.numel()));
    if (!(g.lr_scale >= 0.0f) || !(g.weight_decay >= 0.0f))
      throw std::invalid_argument("SGD group: learning-rate factor and weight decay must be >= 0");
    at = g.end;
  }
  groups_ = std::move(groups);
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
