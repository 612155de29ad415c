// The model zoo: PyTorch names, parameter counts, output shapes, initialisation.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "engine/autograd.h"
#include "engine/kernels.h"
#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "models/registry.h"

using namespace polyak;

namespace {
int64_t count_parameters(const nn::Module& m) {
  int64_t n = 0;
  for (const auto& [name, t] : m.named_parameters()) n += t.numel();
  return n;
}

std::vector<std::string> keys(const nn::Module& m) {
  std::vector<std::string> out;
  for (const auto& [name, t] : m.state_dict()) out.push_back(name);
  return out;
}

bool has_key(const nn::Module& m, const std::string& key) {
  for (const auto& [name, t] : m.state_dict())
    if (name == key) return true;
  return false;
}
}  // namespace

TEST_CASE("models: parameter counts match the reference implementations") {
  // Reference counts with 10 classes: pytorch_resnet_cifar10 (option A), kuangliu's
  // pytorch-cifar ResNets, WideResNet-pytorch, kuangliu's VGG-16 minus its BN layers,
  // and airbench94's network (tools/torch_models.py, sum of numel of its parameters).
  const std::map<std::string, int64_t> expected = {
      {"resnet20", 269722},   {"resnet32", 464154},    {"resnet56", 853018},  {"resnet18", 11173962},
      {"resnet34", 21282122}, {"wrn28_10", 36479194}, {"vgg16", 14719818}, {"airbench94", 1972792},
  };
  for (const auto& model : expected) {
    Rng rng(0);
    CAPTURE(model.first);
    CHECK(count_parameters(*models::create_model(model.first, 10, rng)) == model.second);
  }
  Rng rng(0);
  CHECK(count_parameters(*models::create_model("resnet18", 100, rng)) == 11173962 + 90 * 512 + 90);
}

TEST_CASE("models: state dict names are PyTorch's") {
  Rng rng(0);
  const auto r20 = models::create_model("resnet20", 10, rng);
  const std::vector<std::string> first = {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                                          "bn1.running_var", "bn1.num_batches_tracked", "layer1.0.conv1.weight"};
  const std::vector<std::string> k = keys(*r20);
  CHECK(std::vector<std::string>(k.begin(), k.begin() + 7) == first);
  CHECK(k.back() == "linear.bias");
  CHECK(has_key(*r20, "layer3.2.bn2.running_var"));
  CHECK(!has_key(*r20, "layer2.0.shortcut.0.weight"));  // option A has no parameters

  const auto r18 = models::create_model("resnet18", 10, rng);
  CHECK(has_key(*r18, "layer2.0.shortcut.0.weight"));
  CHECK(has_key(*r18, "layer2.0.shortcut.1.num_batches_tracked"));
  CHECK(!has_key(*r18, "layer1.0.shortcut.0.weight"));
  CHECK(has_key(*r18, "layer4.1.bn2.bias"));
  CHECK(keys(*r18).size() == 122);  // 62 parameters + 60 buffers in torch

  const auto wrn = models::create_model("wrn28_10", 10, rng);
  CHECK(has_key(*wrn, "block1.layer.0.convShortcut.weight"));
  CHECK(has_key(*wrn, "block3.layer.3.bn2.running_mean"));
  CHECK(has_key(*wrn, "fc.weight"));
  CHECK(!has_key(*wrn, "block1.layer.1.convShortcut.weight"));

  const auto air = models::create_model("airbench94", 10, rng);
  CHECK(keys(*air).size() == 39);  // as torch's state_dict
  CHECK(keys(*air).front() == "0.weight");
  CHECK(has_key(*air, "0.bias"));
  CHECK(has_key(*air, "2.norm1.num_batches_tracked"));
  CHECK(has_key(*air, "4.conv2.weight"));
  CHECK(keys(*air).back() == "7.weight");

  const auto vgg = models::create_model("vgg16", 10, rng);
  CHECK(keys(*vgg).front() == "features.0.weight");
  CHECK(has_key(*vgg, "features.2.weight"));   // conv, ReLU, conv
  CHECK(has_key(*vgg, "features.5.bias"));     // ..., max-pool at 4, conv at 5
  CHECK(keys(*vgg).back() == "classifier.bias");
}

TEST_CASE("models: forward shapes and an unknown name") {
  for (const std::string name : {"resnet20", "resnet18", "vgg16", "tiny_cnn", "airbench94"}) {
    CAPTURE(name);
    Rng rng(1);
    const auto model = models::create_model(name, 7, rng);
    NoGradGuard no_grad;
    model->train();
    CHECK((*model)(Tensor::normal({2, 3, 32, 32}, 0, 1, rng)).shape() == Shape{2, 7});
    model->eval();
    CHECK((*model)(Tensor::normal({2, 3, 32, 32}, 0, 1, rng)).shape() == Shape{2, 7});
  }
  Rng rng(0);
  CHECK_THROWS_WITH_AS(models::create_model("resnet19", 10, rng), doctest::Contains("unknown model 'resnet19'"),
                       std::invalid_argument);
}

TEST_CASE("models: ResNet convs are Kaiming-normal fan_out, BN starts at weight 1 and bias 0") {
  Rng rng(2);
  const auto model = models::create_model("resnet18", 10, rng);
  for (auto& [name, module] : model->named_modules()) {
    if (auto* conv = dynamic_cast<nn::Conv2d*>(module); conv && name == "layer3.0.conv2") {
      const std::vector<float> w = conv->weight.to_vector<float>();
      double sq = 0;
      for (float v : w) sq += static_cast<double>(v) * v;
      const double expected_var = 2.0 / (256 * 9);
      CHECK(sq / static_cast<double>(w.size()) == doctest::Approx(expected_var).epsilon(0.02));
    }
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(module)) {
      const std::vector<float> gw = bn->weight.to_vector<float>(), gb = bn->bias.to_vector<float>();
      CHECK(std::all_of(gw.begin(), gw.end(), [](float v) { return v == 1.0f; }));
      CHECK(std::all_of(gb.begin(), gb.end(), [](float v) { return v == 0.0f; }));
    }
  }
}

TEST_CASE("models: the same seed builds the same weights") {
  Rng a(5), b(5);
  const auto ma = models::create_model("resnet20", 10, a), mb = models::create_model("resnet20", 10, b);
  const auto sa = ma->state_dict(), sb = mb->state_dict();
  for (size_t i = 0; i < sa.size(); ++i) {
    if (sa[i].second.dtype() != DType::F32) continue;
    CHECK(sa[i].second.to_vector<float>() == sb[i].second.to_vector<float>());
  }
}

// The fast CPU table (fused conv-BN-ReLU, Winograd, our SGEMM) and the reference table
// (plain loops, fusions composed) compute the same model: a training step's loss, the
// output and every gradient of ResNet-20 agree to float rounding.
TEST_CASE("models: ResNet-20 computes the same step on the fast and the reference kernels") {
  struct Step {
    float loss;
    std::vector<std::vector<float>> grads;
  };
  const auto step = [](bool reference) {
    const bool was = using_reference_kernels();
    use_reference_kernels(reference);
    Rng rng(8);
    const auto model = models::create_model("resnet20", 10, rng);
    model->train();
    const Tensor x = Tensor::normal({4, 3, 32, 32}, 0, 1, rng);
    const std::vector<int64_t> label_values = {1, 7, 3, 0};
    const Tensor labels = Tensor::from_data(label_values.data(), {4});
    const Tensor loss = cross_entropy(model->forward(x), labels);
    loss.backward();
    Step s{loss.item<float>(), {}};
    for (const auto& [name, p] : model->named_parameters()) s.grads.push_back(p.grad().to_vector<float>());
    use_reference_kernels(was);
    return s;
  };
  const Step fast = step(false), ref = step(true);
  CHECK(fast.loss == doctest::Approx(ref.loss).epsilon(1e-5));
  REQUIRE(fast.grads.size() == ref.grads.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < fast.grads.size(); ++i)
    for (size_t j = 0; j < fast.grads[i].size(); ++j) {
      worst = std::max(worst, static_cast<double>(std::abs(fast.grads[i][j] - ref.grads[i][j])));
      scale = std::max(scale, static_cast<double>(std::abs(ref.grads[i][j])));
    }
  CAPTURE(worst);
  CAPTURE(scale);
  CHECK(worst <= 1e-3 * scale);
}

TEST_CASE("models: airbench94's convolutions start as identities on their first input-many filters") {
  Rng rng(4);
  const auto model = models::create_model("airbench94", 10, rng);
  for (const auto& named : model->named_modules()) {
    auto* conv = dynamic_cast<nn::Conv2d*>(named.second);
    if (!conv) continue;
    const std::string& layer = named.first;  // clang 14 cannot capture a structured binding
    CAPTURE(layer);
    const Tensor& w = conv->weight;
    const int64_t out = w.size(0), in = w.size(1), k = w.size(2);
    const std::vector<float> v = w.to_vector<float>();
    for (int64_t o = 0; o < std::min(out, in); ++o)
      for (int64_t i = 0; i < in; ++i)
        for (int64_t y = 0; y < k; ++y)
          for (int64_t x = 0; x < k; ++x) {
            const float want = (o == i && y == k / 2 && x == k / 2) ? 1.0f : 0.0f;
            if (v[static_cast<size_t>(((o * in + i) * k + y) * k + x)] != want) FAIL_CHECK("filter " << o << " is not dirac");
          }
    if (out > in) {  // the other filters keep PyTorch's default draw
      double sq = 0;
      for (size_t j = static_cast<size_t>(in * in * k * k); j < v.size(); ++j) sq += static_cast<double>(v[j]) * v[j];
      CHECK(sq > 0);
    }
    if (conv->bias.defined()) CHECK(conv->bias.to_vector<float>() == std::vector<float>(static_cast<size_t>(out), 0.0f));
  }
}
