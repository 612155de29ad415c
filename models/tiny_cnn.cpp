// TinyCnn: three conv-BN-ReLU blocks small enough to train on a CPU in seconds, for
// tests and quick demos.
//   conv3x3(3->16) BN ReLU maxpool2   32x32 -> 16x16
//   conv3x3(16->32) BN ReLU maxpool2  16x16 -> 8x8
//   conv3x3(32->64) BN ReLU           8x8
//   global average pool -> linear(64 -> classes)
#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "models/init.h"
#include "models/registry.h"
#include "models/resnets.h"

namespace polyak::models {

namespace {

class TinyCnn : public Classifier {
 public:
  TinyCnn(int num_classes, Rng& rng) {
    int64_t in = 3;
    for (int i = 0; i < 3; ++i) {
      const int64_t out = int64_t{16} << i;
      const std::string n = std::to_string(i + 1);
      convs_.push_back(register_module("conv" + n, std::make_shared<nn::Conv2d>(in, out, 3, rng, 1, 1, false)));
      bns_.push_back(register_module("bn" + n, std::make_shared<nn::BatchNorm2d>(out)));
      in = out;
    }
    fc_ = register_module("fc", std::make_shared<nn::Linear>(in, num_classes, rng));
    kaiming_normal_fan_out_convs(*this, rng);
  }

  Tensor features(const Tensor& x) override {
    Tensor h = x;
    for (size_t i = 0; i < convs_.size(); ++i) {
      h = nn::conv_bn(*convs_[i], *bns_[i], h, {.relu = true});
      if (i + 1 < convs_.size()) h = max_pool2d(h, {.kernel = 2});
    }
    return global_avg_pool2d(h);
  }
  nn::Linear& head() override { return *fc_; }

 private:
  std::vector<std::shared_ptr<nn::Conv2d>> convs_;
  std::vector<std::shared_ptr<nn::BatchNorm2d>> bns_;
  std::shared_ptr<nn::Linear> fc_;
};

}  // namespace

std::shared_ptr<nn::Module> tiny_cnn(int num_classes, Rng& rng) { return std::make_shared<TinyCnn>(num_classes, rng); }

}  // namespace polyak::models
