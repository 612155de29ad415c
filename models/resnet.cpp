// ResNet-18/34 for CIFAR, as kuangliu/pytorch-cifar: a 3x3 stride-1 stem without
// max-pool (32x32 images are small), four stages of basic blocks at 64-128-256-512
// channels, the first block of stages 2-4 at stride 2 with a 1x1-conv + BN projection
// shortcut, a 4x4 average pool and one linear layer.
#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "models/init.h"
#include "models/registry.h"
#include "models/resnets.h"

namespace polyak::models {

namespace {

class BasicBlock : public nn::Module {
 public:
  BasicBlock(int64_t in_planes, int64_t planes, int64_t stride, Rng& rng) {
    conv1_ = register_module("conv1", std::make_shared<nn::Conv2d>(in_planes, planes, 3, rng, stride, 1, false));
    bn1_ = register_module("bn1", std::make_shared<nn::BatchNorm2d>(planes));
    conv2_ = register_module("conv2", std::make_shared<nn::Conv2d>(planes, planes, 3, rng, 1, 1, false));
    bn2_ = register_module("bn2", std::make_shared<nn::BatchNorm2d>(planes));
    if (stride != 1 || in_planes != planes) {
      auto projection = std::make_shared<nn::Sequential>();
      projection->add(std::make_shared<nn::Conv2d>(in_planes, planes, 1, rng, stride, 0, false));
      projection->add(std::make_shared<nn::BatchNorm2d>(planes));
      shortcut_ = register_module("shortcut", projection);
    }
  }

  Tensor forward(const Tensor& x) override {
    const Tensor h = nn::conv_bn(*conv1_, *bn1_, x, {.relu = true});
    return nn::conv_bn(*conv2_, *bn2_, h, {.residual = shortcut_ ? shortcut_->forward(x) : x, .relu = true});
  }

 private:
  std::shared_ptr<nn::Conv2d> conv1_, conv2_;
  std::shared_ptr<nn::BatchNorm2d> bn1_, bn2_;
  std::shared_ptr<nn::Sequential> shortcut_;
};

class ResNet : public Classifier {
 public:
  ResNet(const std::vector<int>& blocks, int num_classes, Rng& rng) {
    conv1_ = register_module("conv1", std::make_shared<nn::Conv2d>(3, 64, 3, rng, 1, 1, false));
    bn1_ = register_module("bn1", std::make_shared<nn::BatchNorm2d>(64));
    int64_t in_planes = 64;
    for (size_t stage = 0; stage < blocks.size(); ++stage) {
      const int64_t planes = int64_t{64} << stage;
      auto layer = std::make_shared<nn::Sequential>();
      for (int b = 0; b < blocks[stage]; ++b) {
        layer->add(std::make_shared<BasicBlock>(in_planes, planes, stage > 0 && b == 0 ? 2 : 1, rng));
        in_planes = planes;
      }
      layers_.push_back(register_module("layer" + std::to_string(stage + 1), layer));
    }
    linear_ = register_module("linear", std::make_shared<nn::Linear>(in_planes, num_classes, rng));
    kaiming_normal_fan_out_convs(*this, rng);
  }

  Tensor features(const Tensor& x) override {
    Tensor h = nn::conv_bn(*conv1_, *bn1_, x, {.relu = true});
    for (const auto& layer : layers_) h = layer->forward(h);
    return global_avg_pool2d(h);  // the 4x4 map: avg_pool2d(out, 4)
  }
  nn::Linear& head() override { return *linear_; }

 private:
  std::shared_ptr<nn::Conv2d> conv1_;
  std::shared_ptr<nn::BatchNorm2d> bn1_;
  std::vector<std::shared_ptr<nn::Sequential>> layers_;
  std::shared_ptr<nn::Linear> linear_;
};

}  // namespace

std::shared_ptr<nn::Module> kuangliu_resnet(int depth, int num_classes, Rng& rng) {
  if (depth == 18) return std::make_shared<ResNet>(std::vector<int>{2, 2, 2, 2}, num_classes, rng);
  if (depth == 34) return std::make_shared<ResNet>(std::vector<int>{3, 4, 6, 3}, num_classes, rng);
  throw std::invalid_argument("ResNet depth must be 18 or 34, got " + std::to_string(depth));
}

}  // namespace polyak::models
