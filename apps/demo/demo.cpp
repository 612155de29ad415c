// demo: trains the small TinyCnn on real CIFAR-10 with the engine core alone (tensors,
// autograd, CPU ops, SGD) and reports loss, accuracy and images/s. It stands in for
// the full training app until that exists.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <numeric>

#include "data/cifar.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim/sgd.h"
#include "engine/parallel.h"
#include "engine/rng.h"
#include "engine/nn/module.h"
#include "models/registry.h"

using namespace polyak;

namespace {

std::string default_data_dir() {
  const char* env = std::getenv("POLYAK_DATA");
  return (std::filesystem::path(env && *env ? env : "../shared/data") / "cifar10").string();
}

// Top-1 accuracy and mean loss of the model (eval mode) over a whole image set.
std::pair<double, double> evaluate(nn::Module& model, const data::ImageSet& set, int64_t batch_size) {
  NoGradGuard no_grad;
  model.eval();
  int64_t correct = 0;
  double loss_sum = 0;
  for (int64_t begin = 0; begin < set.count; begin += batch_size) {
    std::vector<int64_t> idx(std::min(batch_size, set.count - begin));
    std::iota(idx.begin(), idx.end(), begin);
    const Tensor logits = model(data::to_tensor(set, idx));
    loss_sum += cross_entropy(logits, data::labels_tensor(set, idx)).item() * static_cast<double>(idx.size());
    const std::vector<float> l = logits.to_vector<float>();
    const int64_t classes = logits.size(1);
    for (size_t i = 0; i < idx.size(); ++i) {
      const float* row = l.data() + i * classes;
      correct += std::max_element(row, row + classes) - row == set.labels[idx[i]];
    }
  }
  return {100.0 * static_cast<double>(correct) / static_cast<double>(set.count), loss_sum / static_cast<double>(set.count)};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"polyak demo: train a small conv net (tiny_cnn) on real CIFAR-10 with the engine core"};
  std::string data_dir = default_data_dir();
  int epochs = 3, threads = num_threads();
  int64_t batch_size = 128, train_images = 50000;
  float lr = 0.05f;
  uint64_t seed = 0;
  app.add_option("--data", data_dir, "CIFAR-10 folder (binary version, plain or .gz)")->capture_default_str();
  app.add_option("--epochs", epochs, "passes over the training images")->capture_default_str()->check(CLI::Range(1, 1000));
  app.add_option("--batch-size", batch_size, "images per step")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--train-images", train_images, "use the first N training images")->capture_default_str()->check(CLI::Range(1, 50000));
  app.add_option("--lr", lr, "learning rate (SGD, Nesterov momentum 0.9, weight decay 5e-4)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "seed for initialisation and shuffling")->capture_default_str();
  app.add_option("--threads", threads, "CPU threads")->capture_default_str()->check(CLI::Range(1, 256));
  CLI11_PARSE(app, argc, argv);
  set_num_threads(threads);

  data::ImageSet train, test;
  try {
    train = data::load_cifar10(data_dir, data::CifarSplit::Train);
    test = data::load_cifar10(data_dir, data::CifarSplit::Test);
  } catch (const data::DataError& e) {
    std::fprintf(stderr, "demo: %s\n", e.what());
    return 2;
  }
  std::vector<int64_t> order(std::min<int64_t>(train_images, train.count));
  std::iota(order.begin(), order.end(), 0);
  std::printf("demo: TinyCnn on CIFAR-10 (%zu train / %lld test images), batch %lld, %d epochs, %d threads\n",
              order.size(), static_cast<long long>(test.count), static_cast<long long>(batch_size), epochs, threads);

  Rng rng(seed);
  const auto model = models::create_model("tiny_cnn", train.num_classes, rng);
  model->pack_arenas();
  Sgd sgd(*model, {.lr = lr, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true});
  const int64_t steps_per_epoch = (static_cast<int64_t>(order.size()) + batch_size - 1) / batch_size;
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);  // Fisher-Yates
    const auto start = std::chrono::steady_clock::now();
    model->train();
    double loss_sum = 0;
    for (int64_t step = 0; step < steps_per_epoch; ++step) {
      // Cosine decay of the learning rate over the whole run.
      const double progress = static_cast<double>((epoch - 1) * steps_per_epoch + step) / (epochs * steps_per_epoch);
      sgd.options().lr = static_cast<float>(0.5 * lr * (1.0 + std::cos(3.14159265358979 * progress)));
      const auto first = order.begin() + step * batch_size;
      const std::vector<int64_t> idx(first, first + std::min<int64_t>(batch_size, order.end() - first));
      model->zero_grad();
      const Tensor loss = cross_entropy((*model)(data::to_tensor(train, idx)), data::labels_tensor(train, idx));
      loss.backward();
      sgd.step();
      loss_sum += loss.item();
      if ((step + 1) % 20 == 0 || step + 1 == steps_per_epoch) {
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::printf("\r  epoch %d  step %4lld/%lld  loss %.3f  %.0f images/s", epoch, static_cast<long long>(step + 1),
                    static_cast<long long>(steps_per_epoch), loss_sum / static_cast<double>(step + 1),
                    static_cast<double>((step + 1) * batch_size) / seconds);
        std::fflush(stdout);
      }
    }
    const auto [test_acc, test_loss] = evaluate(*model, test, 500);
    std::printf("\n  epoch %d: train loss %.3f, test accuracy %.2f%%, test loss %.3f\n", epoch,
                loss_sum / static_cast<double>(steps_per_epoch), test_acc, test_loss);
  }
  return 0;
}
