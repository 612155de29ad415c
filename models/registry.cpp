#include "models/registry.h"

#include <functional>
#include <map>
#include <stdexcept>

#include "engine/nn/layers.h"
#include "models/resnets.h"

namespace polyak::models {

namespace {
using Factory = std::function<std::shared_ptr<nn::Module>(int, Rng&)>;

const std::map<std::string, Factory>& factories() {
  static const std::map<std::string, Factory> table = {
      {"resnet20", [](int c, Rng& r) { return cifar_resnet(20, c, r); }},
      {"resnet32", [](int c, Rng& r) { return cifar_resnet(32, c, r); }},
      {"resnet56", [](int c, Rng& r) { return cifar_resnet(56, c, r); }},
      {"resnet18", [](int c, Rng& r) { return kuangliu_resnet(18, c, r); }},
      {"resnet34", [](int c, Rng& r) { return kuangliu_resnet(34, c, r); }},
      {"wrn28_10", [](int c, Rng& r) { return wide_resnet(28, 10, c, r); }},
      {"vgg16", [](int c, Rng& r) { return vgg16(c, r); }},
      {"tiny_cnn", [](int c, Rng& r) { return tiny_cnn(c, r); }},
      {"airbench94", [](int c, Rng& r) { return airbench94(c, r); }},
  };
  return table;
}
}  // namespace

Tensor Classifier::forward(const Tensor& x) { return head().forward(features(x)); }

Classifier& as_classifier(nn::Module& model) {
  auto* classifier = dynamic_cast<Classifier*>(&model);
  if (!classifier) throw std::invalid_argument("the model has no separate backbone and linear head");
  return *classifier;
}

const std::vector<std::string>& model_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& [name, factory] : factories()) out.push_back(name);
    return out;
  }();
  return names;
}

std::shared_ptr<nn::Module> create_model(const std::string& name, int num_classes, Rng& rng) {
  if (num_classes < 2) throw std::invalid_argument("a model needs at least 2 classes, got " + std::to_string(num_classes));
  const auto it = factories().find(name);
  if (it == factories().end()) {
    std::string known;
    for (const std::string& n : model_names()) known += (known.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown model '" + name + "' (known: " + known + ")");
  }
  return it->second(num_classes, rng);
}

float default_weight_decay(const std::string& name) { return name.rfind("resnet", 0) == 0 ? 1e-4f : 5e-4f; }

}  // namespace polyak::models
