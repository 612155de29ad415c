// The model zoo, by name. Every model maps (N, 3, 32, 32) images to (N, classes)
// logits and names its tensors as the reference PyTorch implementation does, so its
// checkpoints load there by name.
//
//   resnet20/32/56  He et al. 2016 CIFAR ResNets (3 stages of 16-32-64 channels, 3n
//                   basic blocks each), option-A shortcuts (parameter-free: stride-2
//                   subsampling and zero channel padding), as the original paper and
//                   the widely used akamaster/pytorch_resnet_cifar10.
//   resnet18/34     the CIFAR variant of kuangliu/pytorch-cifar: 3x3 stride-1 stem, no
//                   max-pool, stages 64-128-256-512, 1x1-conv+BN projection shortcuts.
//   wrn28_10        WideResNet-28-10 (Zagoruyko & Komodakis), pre-activation blocks,
//                   names of xternalz/WideResNet-pytorch.
//   vgg16           VGG-16 without BatchNorm: 13 convs with bias + ReLU, 5 max-pools,
//                   one linear classifier (kuangliu's layout without the BN layers).
//   tiny_cnn        three conv-BN-ReLU blocks, for tests and quick demos.
//   airbench94      the network of Keller Jordan's CIFAR-10 speedrun airbench94 (a 2x2
//                   whitening conv, three conv-pool-BN-GELU groups of 64-256-256,
//                   logits scaled by 1/9; models/airbench.cpp), names of its
//                   nn.Sequential.
//
// Initialisation: convs Kaiming-normal (fan_out, ReLU gain) in the ResNets and WRN as
// torchvision does, PyTorch's default elsewhere; BatchNorm weight 1, bias 0; linear
// layers PyTorch's default U(-1/sqrt(in), 1/sqrt(in)) (WRN: bias 0 as its reference).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/nn/module.h"

namespace polyak {
class Rng;
}
namespace polyak::nn {
class Linear;
}

namespace polyak::models {

// Every zoo model is a backbone followed by one linear layer: forward(x) is
// head()(features(x)) (airbench94 scales that by a constant). features() is what a
// linear probe trains a new head on (the input of the last linear layer, after global
// pooling / flattening).
class Classifier : public nn::Module {
 public:
  // (N, 3, 32, 32) images -> (N, F) features.
  virtual Tensor features(const Tensor& x) = 0;
  // The final linear layer (F -> classes), registered under its PyTorch name.
  virtual nn::Linear& head() = 0;
  Tensor forward(const Tensor& x) override;
};

// `model` as a Classifier (every model create_model() returns is one); throws
// std::invalid_argument otherwise.
Classifier& as_classifier(nn::Module& model);

// Throws std::invalid_argument naming the unknown model and listing the known ones.
std::shared_ptr<nn::Module> create_model(const std::string& name, int num_classes, Rng& rng);
const std::vector<std::string>& model_names();
// The SGD weight decay of the EMA paper's recipe for `name`: 1e-4 for the ResNets,
// 5e-4 for the others (train's default, and bench's, so that both time the same step).
float default_weight_decay(const std::string& name);

}  // namespace polyak::models
