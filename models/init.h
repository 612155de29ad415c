// Weight initialisations shared by the model definitions.
#pragma once

#include "engine/nn/module.h"

namespace polyak {
class Rng;
}

namespace polyak::models {

// Re-draws every Conv2d weight below `root` from N(0, 2 / fan_out), fan_out =
// out_channels * kh * kw (torch.nn.init.kaiming_normal_(mode="fan_out",
// nonlinearity="relu")), in module order.
void kaiming_normal_fan_out_convs(nn::Module& root, Rng& rng);

}  // namespace polyak::models
