#include "ema/lookahead.h"

#include <stdexcept>
#include <string>

#include "engine/backend.h"

namespace polyak::ema {

Lookahead::Lookahead(nn::Module& model)
    : model_(model), params_(model.parameter_arena().clone()), buffers_(model.buffer_arena().clone()) {}

void Lookahead::update(float decay) {
  if (!(decay >= 0.0f && decay <= 1.0f))
    throw std::invalid_argument("Lookahead decay " + std::to_string(decay) + ": expected a number in [0, 1]");
  // The same lerp as the EmaSet's (multi_lerp with one target), then the copy back.
  const auto step = [decay](Tensor& slow, const Tensor& fast) {
    if (fast.numel() == 0) return;
    MultiLerp lerp;
    lerp.count = 1;
    lerp.kept[0] = decay;
    lerp.target[0] = slow.data<float>();
    kernels(fast.device()).multi_lerp(lerp, fast.numel(), fast.data<float>());
    Tensor(fast).copy_(slow);
  };
  step(params_, model_.parameter_arena());
  step(buffers_, model_.buffer_arena());
}

}  // namespace polyak::ema
