// airbench94: the network of Keller Jordan's CIFAR-10 speedrun (94% in 3.8 s on an
// A100), after tysam-code's hlb-CIFAR10, with PyTorch's names of its nn.Sequential:
//   0  conv 2x2, 3 -> 24, no padding, bias     the whitening layer (models/whitening.h),
//   1  GELU                                     frozen; its bias trains for 3 epochs
//   2  ConvGroup(24 -> 64)      31x31 -> 15x15
//   3  ConvGroup(64 -> 256)     15x15 -> 7x7
//   4  ConvGroup(256 -> 256)    7x7 -> 3x3
//   5  max-pool 3x3, 6 flatten  -> 256
//   7  linear 256 -> classes, no bias
//   8  x 1/9                    (a fixed scale of the logits)
// ConvGroup: conv1 3x3 "same" -> max-pool 2 -> norm1 -> GELU -> conv2 3x3 -> norm2 ->
// GELU, convolutions without bias. BatchNorm with eps 1e-12 and momentum 0.4 (the
// recipe's 0.6 is the kept share); its weight stays 1 (the recipe trains only its
// bias). Convolutions start from PyTorch's default draw, then their first C_in filters
// are set to the identity (torch.nn.init.dirac_): each layer starts as a residual
// pass-through of its input, plus new channels.
#include <cmath>

#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "models/registry.h"
#include "models/resnets.h"

namespace polyak::models {

namespace {

// dirac_ on the first min(out, in) filters: w[i, i, k/2, k/2] = 1, the rest of them 0.
void dirac_first_filters(Tensor& weight) {
  const int64_t out = weight.size(0), in = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  std::vector<float> w = weight.to_vector<float>();
  for (int64_t o = 0; o < std::min(out, in); ++o)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t y = 0; y < kh; ++y)
        for (int64_t x = 0; x < kw; ++x)
          w[static_cast<size_t>(((o * in + i) * kh + y) * kw + x)] = (i == o && y == kh / 2 && x == kw / 2) ? 1.0f : 0.0f;
  weight.copy_(Tensor::from_vector(w, weight.shape()));
}

std::shared_ptr<nn::Conv2d> conv(int64_t in, int64_t out, int64_t kernel, int64_t padding, bool bias, Rng& rng) {
  auto c = std::make_shared<nn::Conv2d>(in, out, kernel, rng, 1, padding, bias);
  dirac_first_filters(c->weight);
  if (bias) c->bias.zero_();
  return c;
}

class ConvGroup : public nn::Module {
 public:
  ConvGroup(int64_t in, int64_t out, Rng& rng)
      : conv1_(register_module("conv1", conv(in, out, 3, 1, false, rng))),
        norm1_(register_module("norm1", std::make_shared<nn::BatchNorm2d>(out, 1e-12f, 0.4f))),
        conv2_(register_module("conv2", conv(out, out, 3, 1, false, rng))),
        norm2_(register_module("norm2", std::make_shared<nn::BatchNorm2d>(out, 1e-12f, 0.4f))) {}

  Tensor forward(const Tensor& x) override {
    const Tensor pooled = max_pool2d((*conv1_)(x), {.kernel = 2});
    return gelu((*norm2_)((*conv2_)(gelu((*norm1_)(pooled)))));
  }

 private:
  std::shared_ptr<nn::Conv2d> conv1_;
  std::shared_ptr<nn::BatchNorm2d> norm1_;
  std::shared_ptr<nn::Conv2d> conv2_;
  std::shared_ptr<nn::BatchNorm2d> norm2_;
};

class Airbench94 : public Classifier {
 public:
  Airbench94(int num_classes, Rng& rng)
      : whiten_(register_module("0", conv(3, 24, 2, 0, true, rng))),
        group1_(register_module("2", std::make_shared<ConvGroup>(24, 64, rng))),
        group2_(register_module("3", std::make_shared<ConvGroup>(64, 256, rng))),
        group3_(register_module("4", std::make_shared<ConvGroup>(256, 256, rng))),
        head_(register_module("7", std::make_shared<nn::Linear>(256, num_classes, rng, false))) {}

  Tensor features(const Tensor& x) override {
    const Tensor h = (*group3_)((*group2_)((*group1_)(gelu((*whiten_)(x)))));
    return max_pool2d(h, {.kernel = 3}).flatten(1);
  }
  nn::Linear& head() override { return *head_; }
  Tensor forward(const Tensor& x) override { return mul_scalar(Classifier::forward(x), 1.0f / 9.0f); }

 private:
  std::shared_ptr<nn::Conv2d> whiten_;
  std::shared_ptr<ConvGroup> group1_, group2_, group3_;
  std::shared_ptr<nn::Linear> head_;
};

}  // namespace

std::shared_ptr<nn::Module> airbench94(int num_classes, Rng& rng) { return std::make_shared<Airbench94>(num_classes, rng); }

}  // namespace polyak::models
