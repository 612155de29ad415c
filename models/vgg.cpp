// VGG-16 for CIFAR without BatchNorm: thirteen 3x3 convs (with bias) + ReLU in five
// groups separated by 2x2 max-pools (32x32 -> 1x1 at 512 channels), then one linear
// classifier. Tensor names follow nn.Sequential indices: features.0 (conv),
// features.1 (ReLU), ..., classifier.
#include "engine/nn/layers.h"
#include "models/registry.h"
#include "models/resnets.h"

namespace polyak::models {

namespace {

class Vgg : public Classifier {
 public:
  Vgg(const std::vector<int>& config, int num_classes, Rng& rng) {
    features_ = register_module("features", std::make_shared<nn::Sequential>());
    int64_t in = 3;
    for (int c : config) {
      if (c == 0) {
        features_->add(std::make_shared<nn::MaxPool2d>(Pool2dOptions{.kernel = 2, .stride = 2}));
      } else {
        features_->add(std::make_shared<nn::Conv2d>(in, c, 3, rng, 1, 1, true));
        features_->add(std::make_shared<nn::ReLU>());
        in = c;
      }
    }
    classifier_ = register_module("classifier", std::make_shared<nn::Linear>(in, num_classes, rng));
  }

  Tensor features(const Tensor& x) override { return features_->forward(x).flatten(1); }
  nn::Linear& head() override { return *classifier_; }

 private:
  std::shared_ptr<nn::Sequential> features_;
  std::shared_ptr<nn::Linear> classifier_;
};

}  // namespace

std::shared_ptr<nn::Module> vgg16(int num_classes, Rng& rng) {
  // Channels per conv, 0 for a max-pool.
  return std::make_shared<Vgg>(std::vector<int>{64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0},
                               num_classes, rng);
}

}  // namespace polyak::models
