// He et al. (2016) CIFAR ResNets, depth 6n + 2, with option-A shortcuts.
//
// A basic block computes relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). Where a
// block halves the resolution and doubles the channels, option A's shortcut takes
// every second pixel (x[:, :, ::2, ::2]) and pads the channels with zeros, planes/4
// on each side: no parameters, as in the paper's CIFAR experiments.
#include <cmath>

#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "models/init.h"
#include "models/registry.h"
#include "models/resnets.h"

namespace polyak::models {

namespace {

class OptionABlock : public nn::Module {
 public:
  OptionABlock(int64_t in_planes, int64_t planes, int64_t stride, Rng& rng)
      : downsample_(stride != 1 || in_planes != planes), pad_(planes / 4) {
    conv1_ = register_module("conv1", std::make_shared<nn::Conv2d>(in_planes, planes, 3, rng, stride, 1, false));
    bn1_ = register_module("bn1", std::make_shared<nn::BatchNorm2d>(planes));
    conv2_ = register_module("conv2", std::make_shared<nn::Conv2d>(planes, planes, 3, rng, 1, 1, false));
    bn2_ = register_module("bn2", std::make_shared<nn::BatchNorm2d>(planes));
  }

  Tensor forward(const Tensor& x) override {
    const Tensor h = nn::conv_bn(*conv1_, *bn1_, x, {.relu = true});
    return nn::conv_bn(*conv2_, *bn2_, h, {.residual = shortcut(x), .relu = true});
  }

 private:
  Tensor shortcut(const Tensor& x) const {
    if (!downsample_) return x;
    const Tensor sub = x.slice(2, 0, x.size(2), 2).slice(3, 0, x.size(3), 2);
    return pad(sub, {{0, 0}, {pad_, pad_}});
  }

  bool downsample_;
  int64_t pad_;
  std::shared_ptr<nn::Conv2d> conv1_, conv2_;
  std::shared_ptr<nn::BatchNorm2d> bn1_, bn2_;
};

class CifarResNet : public Classifier {
 public:
  CifarResNet(int blocks_per_stage, int num_classes, Rng& rng) {
    conv1_ = register_module("conv1", std::make_shared<nn::Conv2d>(3, 16, 3, rng, 1, 1, false));
    bn1_ = register_module("bn1", std::make_shared<nn::BatchNorm2d>(16));
    int64_t in_planes = 16;
    const int64_t widths[] = {16, 32, 64};
    for (int stage = 0; stage < 3; ++stage) {
      auto layer = std::make_shared<nn::Sequential>();
      for (int b = 0; b < blocks_per_stage; ++b) {
        const int64_t stride = stage > 0 && b == 0 ? 2 : 1;
        layer->add(std::make_shared<OptionABlock>(in_planes, widths[stage], stride, rng));
        in_planes = widths[stage];
      }
      layers_.push_back(register_module("layer" + std::to_string(stage + 1), layer));
    }
    linear_ = register_module("linear", std::make_shared<nn::Linear>(64, num_classes, rng));
    kaiming_normal_fan_out_convs(*this, rng);
  }

  Tensor features(const Tensor& x) override {
    Tensor h = nn::conv_bn(*conv1_, *bn1_, x, {.relu = true});
    for (const auto& layer : layers_) h = layer->forward(h);
    return global_avg_pool2d(h);
  }
  nn::Linear& head() override { return *linear_; }

 private:
  std::shared_ptr<nn::Conv2d> conv1_;
  std::shared_ptr<nn::BatchNorm2d> bn1_;
  std::vector<std::shared_ptr<nn::Sequential>> layers_;
  std::shared_ptr<nn::Linear> linear_;
};

}  // namespace

std::shared_ptr<nn::Module> cifar_resnet(int depth, int num_classes, Rng& rng) {
  if ((depth - 2) % 6 != 0) throw std::invalid_argument("CIFAR ResNet depth must be 6n + 2, got " + std::to_string(depth));
  return std::make_shared<CifarResNet>((depth - 2) / 6, num_classes, rng);
}

}  // namespace polyak::models
