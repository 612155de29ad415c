#include "ema/bn_recompute.h"

#include "engine/autograd.h"
#include "engine/nn/layers.h"

namespace polyak::ema {

namespace {

// The running statistics of `layers`, mean then variance of each, as one vector.
void append_statistics(const std::vector<nn::BatchNorm2d*>& layers, std::vector<float>& out) {
  for (nn::BatchNorm2d* bn : layers)
    for (const Tensor& t : {bn->running_mean, bn->running_var}) {
      const std::vector<float> values = t.to_vector<float>();
      out.insert(out.end(), values.begin(), values.end());
    }
}

// Every rank's per-batch statistics, rank 0's batches first: `per_batch` floats each.
std::vector<float> gather_batches(dist::Communicator& ranks, const std::vector<float>& mine, int64_t per_batch,
                                  int64_t& batches) {
  const double my_batches = static_cast<double>(static_cast<int64_t>(mine.size()) / per_batch);
  std::vector<int64_t> counts;
  batches = 0;
  for (double b : ranks.all_gather(&my_batches, 1)) {
    counts.push_back(static_cast<int64_t>(b) * per_batch);
    batches += static_cast<int64_t>(b);
  }
  std::vector<float> all(static_cast<size_t>(batches * per_batch));
  ranks.all_gather(mine.data(), counts, all.data());
  return all;
}

}  // namespace

int64_t recompute_bn(nn::Module& model, const BatchSource& source, int64_t max_batches, dist::Communicator* ranks) {
  std::vector<nn::BatchNorm2d*> layers;
  std::vector<std::optional<float>> momenta;
  for (auto& [name, module] : model.named_modules()) {
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(module)) {
      layers.push_back(bn);
      momenta.push_back(bn->momentum);
      // Momentum 1: after a batch the running statistics are exactly that batch's
      // ((1 - 1) r + 1 s = s), ready to be read off.
      bn->momentum = 1.0f;
    }
  }
  std::vector<float> statistics;  // batch after batch
  int64_t used = 0;
  if (!layers.empty()) {
    NoGradGuard no_grad;
    model.train();
    while (max_batches == 0 || used < max_batches) {
      const std::optional<Tensor> images = source();
      if (!images) break;
      (void)model(*images);
      append_statistics(layers, statistics);
      ++used;
    }
  }
  int64_t per_batch = 0;
  for (nn::BatchNorm2d* bn : layers) per_batch += 2 * bn->running_mean.numel();
  if (ranks && ranks->size() > 1 && per_batch > 0) statistics = gather_batches(*ranks, statistics, per_batch, used);
  if (used > 0) {
    // Sum in float64 in batch order, then one division.
    std::vector<double> sum(static_cast<size_t>(per_batch), 0.0);
    for (int64_t b = 0; b < used; ++b)
      for (int64_t i = 0; i < per_batch; ++i) sum[static_cast<size_t>(i)] += statistics[static_cast<size_t>(b * per_batch + i)];
    size_t at = 0;
    for (nn::BatchNorm2d* bn : layers) {
      for (Tensor t : {bn->running_mean, bn->running_var}) {
        std::vector<float> mean(static_cast<size_t>(t.numel()));
        for (float& m : mean) m = static_cast<float>(sum[at++] / static_cast<double>(used));
        t.copy_(Tensor::from_vector(mean, t.shape(), t.device()));
      }
      bn->num_batches_tracked.copy_(Tensor::from_data(&used, {}, bn->num_batches_tracked.device()));
    }
  } else {
    for (nn::BatchNorm2d* bn : layers) bn->reset_running_stats();
  }
  for (size_t i = 0; i < layers.size(); ++i) layers[i]->momentum = momenta[i];
  model.eval();
  return used;
}

BufferBackup::BufferBackup(nn::Module& model) {
  for (const auto& [name, buffer] : model.named_buffers()) saved_.emplace_back(buffer, buffer.clone());
}

BufferBackup::~BufferBackup() {
  for (auto& [buffer, copy] : saved_) Tensor(buffer).copy_(copy);
}

}  // namespace polyak::ema
