#include "models/init.h"

#include <cmath>

#include "engine/nn/layers.h"
#include "engine/rng.h"

namespace polyak::models {

void kaiming_normal_fan_out_convs(nn::Module& root, Rng& rng) {
  for (auto& [name, module] : root.named_modules()) {
    auto* conv = dynamic_cast<nn::Conv2d*>(module);
    if (!conv) continue;
    const Shape& s = conv->weight.shape();
    const float stddev = std::sqrt(2.0f / static_cast<float>(s[0] * s[2] * s[3]));
    conv->weight.copy_(Tensor::normal(s, 0.0f, stddev, rng, conv->weight.device()));
  }
}

}  // namespace polyak::models
