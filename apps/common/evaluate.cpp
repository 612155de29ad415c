#include "apps/common/evaluate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "apps/common/tta.h"
#include "ema/bn_recompute.h"
#include "engine/autograd.h"

namespace polyak::app {

Predictions predict(nn::Module& model, const data::ImageSet& set, const std::vector<int64_t>& indices,
                    int64_t batch_size, Device device, int tta_level) {
  std::vector<int64_t> all;
  if (indices.empty()) {
    all.resize(static_cast<size_t>(set.count));
    std::iota(all.begin(), all.end(), 0);
  }
  const std::vector<int64_t>& order = indices.empty() ? all : indices;
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  Predictions p;
  p.classes = set.num_classes;
  p.logits.reserve(order.size() * static_cast<size_t>(set.num_classes));
  for (size_t begin = 0; begin < order.size(); begin += static_cast<size_t>(batch_size)) {
    const std::vector<int64_t> idx(order.begin() + static_cast<int64_t>(begin),
                                   order.begin() + static_cast<int64_t>(std::min(order.size(), begin + batch_size)));
    const std::vector<float> logits = tta_logits(model, data::to_tensor(set, idx, device), tta_level).to_vector<float>();
    p.logits.insert(p.logits.end(), logits.begin(), logits.end());
    for (int64_t i : idx) p.labels.push_back(set.labels[i]);
  }
  model.train(was_training);
  return p;
}

data::LoaderOptions recompute_loader_options(int64_t batch_size, bool augment, uint64_t seed, Device device) {
  data::LoaderOptions o;
  o.batch_size = batch_size;
  o.shuffle = true;
  o.augment = augment;
  o.seed = seed ^ 0x62e2ac0d5b1f7c4bULL;
  o.device = device;
  return o;
}

void recompute_bn_on(nn::Module& model, data::Loader& loader, int64_t batches, dist::Communicator* ranks) {
  const data::Loader::State start = loader.state();
  const int64_t left = loader.batches_per_epoch() - start.next_batch;
  const int64_t total = batches > 0 ? std::min(batches, left) : left;
  const dist::Range mine = ranks ? dist::share(total, ranks->rank(), ranks->size()) : dist::Range{0, total};
  loader.set_state({start.epoch, start.next_batch + mine.begin});
  int64_t remaining = mine.size();
  ema::recompute_bn(
      model,
      [&loader, &remaining]() -> std::optional<Tensor> {
        if (remaining-- <= 0) return std::nullopt;
        std::optional<data::Batch> batch = loader.next();
        if (!batch) return std::nullopt;
        return batch->images;
      },
      0, ranks);
}

int64_t argmax_matches(const Tensor& logits, const Tensor& labels) {
  const std::vector<float> l = logits.to_vector<float>();
  const std::vector<int64_t> y = labels.to_vector<int64_t>();
  const int64_t classes = logits.size(1);
  int64_t correct = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const float* row = l.data() + static_cast<int64_t>(i) * classes;
    correct += std::max_element(row, row + classes) - row == y[i];
  }
  return correct;
}

double top1_accuracy(const Predictions& p) {
  if (p.count() == 0) return 0.0;
  int64_t correct = 0;
  for (int64_t i = 0; i < p.count(); ++i) {
    const float* row = p.logits.data() + i * p.classes;
    correct += std::max_element(row, row + p.classes) - row == p.labels[i];
  }
  return 100.0 * static_cast<double>(correct) / static_cast<double>(p.count());
}

double mean_nll(const Predictions& p) {
  if (p.count() == 0) return 0.0;
  double total = 0;
  for (int64_t i = 0; i < p.count(); ++i) {
    const float* row = p.logits.data() + i * p.classes;
    const double top = *std::max_element(row, row + p.classes);
    double z = 0;
    for (int64_t c = 0; c < p.classes; ++c) z += std::exp(row[c] - top);
    total += top + std::log(z) - row[p.labels[i]];  // -log softmax(row)[label]
  }
  return total / static_cast<double>(p.count());
}

}  // namespace polyak::app
