// End to end on real data: the small conv net learns 1,000 real CIFAR-10 images.
#include <doctest/doctest.h>

#include <numeric>

#include "data/cifar.h"
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim/sgd.h"
#include "engine/rng.h"
#include "engine/nn/module.h"
#include "models/registry.h"
#include "support/gradcheck.h"

using namespace polyak;

TEST_CASE("e2e: a small conv net trained on 1,000 real CIFAR-10 images drives the loss down") {
  const std::string dir = polyak::testing::real_data_path("cifar10");
  if (dir.empty()) return;
  const data::ImageSet all = data::load_cifar10(dir, data::CifarSplit::Train);
  std::vector<int64_t> first(1000);
  std::iota(first.begin(), first.end(), 0);
  const data::ImageSet set = data::subset(all, first);

  Rng rng(1);
  const auto model = models::create_model("tiny_cnn", 10, rng);
  model->pack_arenas();
  Sgd sgd(*model, {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.0f, .nesterov = true});
  const auto loss_on = [&](const std::vector<int64_t>& idx, bool training) {
    model->train(training);
    return cross_entropy((*model)(data::to_tensor(set, idx)), data::labels_tensor(set, idx));
  };
  float initial_loss;
  {
    NoGradGuard no_grad;
    initial_loss = loss_on(first, true).item();
  }
  std::vector<int64_t> order = first;
  const int64_t batch = 50;
  for (int step = 0; step < 300; ++step) {
    const int64_t begin = (step * batch) % 1000;
    if (begin == 0)
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
    model->zero_grad();
    const Tensor loss = loss_on({order.begin() + begin, order.begin() + begin + batch}, true);
    loss.backward();
    sgd.step();
  }
  NoGradGuard no_grad;
  const float final_loss = loss_on(first, false).item();
  const float final_train_mode_loss = loss_on(first, true).item();
  MESSAGE("loss on the 1,000 images: " << initial_loss << " before, " << final_loss << " after 300 steps ("
                                       << final_train_mode_loss << " with batch statistics)");
  CHECK(initial_loss > 2.0f);             // near log(10) = 2.30 at initialisation
  CHECK(final_train_mode_loss < 0.5f * initial_loss);
  CHECK(final_loss < 0.7f * initial_loss);  // running statistics lag the batch ones a little
}
