#include "models/tiny_cnn.h"

#include <cmath>

#include "engine/ops.h"
#include "engine/rng.h"

namespace polyak::models {

namespace {
constexpr int64_t kWidths[] = {16, 32, 64};
}

TinyCnn::TinyCnn(int num_classes, Rng& rng, Device device) {
  int64_t in = 3;
  for (int64_t out : kWidths) {
    ConvBnBlock block;
    const float stddev = std::sqrt(2.0f / static_cast<float>(out * 9));  // gain sqrt(2), fan_out = out*3*3
    block.conv_weight = Tensor::normal({out, in, 3, 3}, 0.0f, stddev, rng, device).requires_grad_();
    block.bn_weight = Tensor::ones({out}, device).requires_grad_();
    block.bn_bias = Tensor::zeros({out}, DType::F32, device).requires_grad_();
    block.running_mean = Tensor::zeros({out}, DType::F32, device);
    block.running_var = Tensor::ones({out}, device);
    block.num_batches_tracked = Tensor::zeros({}, DType::I64, device);
    blocks_.push_back(std::move(block));
    in = out;
  }
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  fc_weight_ = Tensor::uniform({num_classes, in}, -bound, bound, rng, device).requires_grad_();
  fc_bias_ = Tensor::uniform({num_classes}, -bound, bound, rng, device).requires_grad_();
}

Tensor TinyCnn::forward(const Tensor& images, bool training) {
  Tensor h = images;
  BatchNormOptions bn;
  bn.training = training;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    ConvBnBlock& b = blocks_[i];
    h = conv2d(h, b.conv_weight, {}, {.stride = 1, .padding = 1});
    h = relu(batch_norm(h, b.bn_weight, b.bn_bias, b.running_mean, b.running_var, b.num_batches_tracked, bn));
    if (i + 1 < blocks_.size()) h = max_pool2d(h, {.kernel = 2});
  }
  return linear(global_avg_pool2d(h), fc_weight_, fc_bias_);
}

std::vector<Tensor> TinyCnn::parameters() const {
  std::vector<Tensor> params;
  for (const ConvBnBlock& b : blocks_) {
    params.push_back(b.conv_weight);
    params.push_back(b.bn_weight);
    params.push_back(b.bn_bias);
  }
  params.push_back(fc_weight_);
  params.push_back(fc_bias_);
  return params;
}

int64_t TinyCnn::forward_macs_per_image() const {
  int64_t macs = 0, in = 3, side = 32;
  for (size_t i = 0; i < std::size(kWidths); ++i) {
    macs += kWidths[i] * in * 9 * side * side;
    in = kWidths[i];
    if (i + 1 < std::size(kWidths)) side /= 2;
  }
  return macs + fc_weight_.numel();
}

}  // namespace polyak::models
