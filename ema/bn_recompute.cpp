#include "ema/bn_recompute.h"

#include "engine/autograd.h"
#include "engine/nn/layers.h"

namespace polyak::ema {

int64_t recompute_bn(nn::Module& model, const BatchSource& source, int64_t max_batches) {
  std::vector<std::pair<nn::BatchNorm2d*, std::optional<float>>> layers;
  for (auto& [name, module] : model.named_modules()) {
    if (auto* bn = dynamic_cast<nn::BatchNorm2d*>(module)) {
      layers.emplace_back(bn, bn->momentum);
      bn->reset_running_stats();
      bn->momentum = std::nullopt;
    }
  }
  int64_t used = 0;
  if (!layers.empty()) {
    NoGradGuard no_grad;
    model.train();
    while (max_batches == 0 || used < max_batches) {
      const std::optional<Tensor> images = source();
      if (!images) break;
      (void)model(*images);
      ++used;
    }
  }
  for (auto& [bn, momentum] : layers) bn->momentum = momentum;
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
