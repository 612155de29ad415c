// TinyCnn: a three-block conv net small enough to train on a CPU in seconds, used by
// the demo, the end-to-end test and the engine benchmark until the full model zoo
// (models/ResNets on engine modules) replaces it.
//
//   conv3x3(3->16) BN ReLU maxpool2   32x32 -> 16x16
//   conv3x3(16->32) BN ReLU maxpool2  16x16 -> 8x8
//   conv3x3(32->64) BN ReLU           8x8
//   global average pool -> linear(64 -> classes)
#pragma once

#include <vector>

#include "engine/tensor.h"

namespace polyak {
class Rng;
}

namespace polyak::models {

struct ConvBnBlock {
  Tensor conv_weight;                        // (out, in, 3, 3), no bias: BN follows
  Tensor bn_weight, bn_bias;                 // (out)
  Tensor running_mean, running_var;          // (out)
  Tensor num_batches_tracked;                // int64 scalar
};

class TinyCnn {
 public:
  // Convs: Kaiming-normal (fan_out, ReLU gain); BN: weight 1, bias 0; linear:
  // PyTorch's default U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
  TinyCnn(int num_classes, Rng& rng, Device device = Device::CPU);

  // (N,3,32,32) images -> (N, classes) logits. `training` selects batch statistics
  // (and updates the running ones) or the running statistics.
  Tensor forward(const Tensor& images, bool training);
  std::vector<Tensor> parameters() const;

  // Multiply-adds of one forward pass of one 32x32 image (for GFLOP/s figures).
  int64_t forward_macs_per_image() const;

 private:
  std::vector<ConvBnBlock> blocks_;
  Tensor fc_weight_, fc_bias_;
};

}  // namespace polyak::models
