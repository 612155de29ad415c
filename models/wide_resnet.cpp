// WideResNet-d-k (Zagoruyko & Komodakis 2016), names as xternalz/WideResNet-pytorch.
//
// Pre-activation blocks: out = conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut, where
// the shortcut is x itself when the shapes agree, else a 1x1 conv of relu(bn1(x)).
// Three groups of (d-4)/6 blocks at 16k, 32k, 64k channels; a final BN + ReLU, 8x8
// average pool and linear layer.
#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "models/init.h"
#include "models/registry.h"
#include "models/resnets.h"

namespace polyak::models {

namespace {

class WideBlock : public nn::Module {
 public:
  WideBlock(int64_t in_planes, int64_t out_planes, int64_t stride, Rng& rng) : equal_in_out_(in_planes == out_planes) {
    bn1_ = register_module("bn1", std::make_shared<nn::BatchNorm2d>(in_planes));
    conv1_ = register_module("conv1", std::make_shared<nn::Conv2d>(in_planes, out_planes, 3, rng, stride, 1, false));
    bn2_ = register_module("bn2", std::make_shared<nn::BatchNorm2d>(out_planes));
    conv2_ = register_module("conv2", std::make_shared<nn::Conv2d>(out_planes, out_planes, 3, rng, 1, 1, false));
    if (!equal_in_out_)
      shortcut_ = register_module("convShortcut",
                                  std::make_shared<nn::Conv2d>(in_planes, out_planes, 1, rng, stride, 0, false));
  }

  Tensor forward(const Tensor& x) override {
    const Tensor pre = bn1_->forward(x, {}, true);
    const Tensor out = conv2_->forward(bn2_->forward(conv1_->forward(pre), {}, true));
    return (equal_in_out_ ? x : shortcut_->forward(pre)) + out;
  }

 private:
  bool equal_in_out_;
  std::shared_ptr<nn::BatchNorm2d> bn1_, bn2_;
  std::shared_ptr<nn::Conv2d> conv1_, conv2_, shortcut_;
};

// xternalz's NetworkBlock: the blocks live in a child called "layer".
class NetworkBlock : public nn::Module {
 public:
  NetworkBlock(int blocks, int64_t in_planes, int64_t out_planes, int64_t stride, Rng& rng) {
    layer_ = register_module("layer", std::make_shared<nn::Sequential>());
    for (int b = 0; b < blocks; ++b)
      layer_->add(std::make_shared<WideBlock>(b == 0 ? in_planes : out_planes, out_planes, b == 0 ? stride : 1, rng));
  }
  Tensor forward(const Tensor& x) override { return layer_->forward(x); }

 private:
  std::shared_ptr<nn::Sequential> layer_;
};

class WideResNet : public Classifier {
 public:
  WideResNet(int depth, int widen, int num_classes, Rng& rng) {
    const int blocks = (depth - 4) / 6;
    const int64_t channels[] = {16, 16 * widen, 32 * widen, 64 * widen};
    conv1_ = register_module("conv1", std::make_shared<nn::Conv2d>(3, channels[0], 3, rng, 1, 1, false));
    for (int g = 0; g < 3; ++g)
      groups_.push_back(register_module("block" + std::to_string(g + 1),
                                        std::make_shared<NetworkBlock>(blocks, channels[g], channels[g + 1], g == 0 ? 1 : 2, rng)));
    bn1_ = register_module("bn1", std::make_shared<nn::BatchNorm2d>(channels[3]));
    fc_ = register_module("fc", std::make_shared<nn::Linear>(channels[3], num_classes, rng));
    kaiming_normal_fan_out_convs(*this, rng);
    fc_->bias.zero_();
  }

  Tensor features(const Tensor& x) override {
    Tensor h = conv1_->forward(x);
    for (const auto& g : groups_) h = g->forward(h);
    return global_avg_pool2d(bn1_->forward(h, {}, true));
  }
  nn::Linear& head() override { return *fc_; }

 private:
  std::shared_ptr<nn::Conv2d> conv1_;
  std::vector<std::shared_ptr<NetworkBlock>> groups_;
  std::shared_ptr<nn::BatchNorm2d> bn1_;
  std::shared_ptr<nn::Linear> fc_;
};

}  // namespace

std::shared_ptr<nn::Module> wide_resnet(int depth, int widen, int num_classes, Rng& rng) {
  if ((depth - 4) % 6 != 0) throw std::invalid_argument("WideResNet depth must be 6n + 4, got " + std::to_string(depth));
  return std::make_shared<WideResNet>(depth, widen, num_classes, rng);
}

}  // namespace polyak::models
