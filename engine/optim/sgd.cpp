#include "engine/optim/sgd.h"

#include <stdexcept>

#include "engine/autograd.h"

namespace polyak {

Sgd::Sgd(std::vector<Tensor> params, SgdOptions options)
    : params_(std::move(params)), buffers_(params_.size()), options_(options) {
  if (options_.nesterov && (options_.momentum <= 0.0f || options_.dampening != 0.0f))
    throw std::invalid_argument("SGD: Nesterov momentum needs momentum > 0 and dampening 0");
  for (const Tensor& p : params_)
    if (!p.requires_grad() || !p.is_leaf() || !p.is_contiguous())
      throw std::invalid_argument("SGD: parameters must be contiguous leaf tensors that require grad");
}

void Sgd::step() {
  NoGradGuard no_grad;
  const SgdOptions& o = options_;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor& p = params_[i];
    const Tensor g = p.grad();
    if (!g.defined()) continue;
    Tensor d = g.clone();
    if (o.weight_decay != 0.0f) d.add_(p, o.weight_decay);
    if (o.momentum != 0.0f) {
      Tensor& b = buffers_[i];
      if (!b.defined()) {
        b = d.clone();
      } else {
        b.mul_(o.momentum).add_(d, 1.0f - o.dampening);
      }
      if (o.nesterov) d.add_(b, o.momentum);
      else d = b;
    }
    p.add_(d, -o.lr);
  }
}

void Sgd::zero_grad() {
  for (const Tensor& p : params_)
    if (p.grad().defined()) p.grad().zero_();
}

}  // namespace polyak
