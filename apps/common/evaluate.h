// Evaluation of a model on (a subset of) an image set: its logits for every image,
// and the top-1 accuracy and mean negative log-likelihood derived from them.
#pragma once

#include <cstdint>
#include <vector>

#include "data/cifar.h"
#include "data/loader.h"
#include "engine/distributed.h"
#include "engine/nn/module.h"

namespace polyak::app {

struct Predictions {
  int64_t classes = 0;
  std::vector<float> logits;    // count x classes, row-major
  std::vector<int64_t> labels;  // count
  int64_t count() const { return static_cast<int64_t>(labels.size()); }
};

// Runs the model in eval mode without gradients over `indices` (all images when
// empty) in batches; restores the model's previous mode. `tta_level` > 0 averages the
// logits over views of each image (apps/common/tta.h).
Predictions predict(nn::Module& model, const data::ImageSet& set, const std::vector<int64_t>& indices,
                    int64_t batch_size = 500, Device device = Device::CPU, int tta_level = 0);

// BatchNorm statistics recompute on training images (ema::recompute_bn). The loader
// sees the batches as training does (shuffled, augmented when training is), from a
// stream of its own seeded from `seed`, so that it never disturbs the training
// loader's.
data::LoaderOptions recompute_loader_options(int64_t batch_size, bool augment, uint64_t seed, Device device);
// Recomputes the model's statistics on the next `batches` batches of `loader`'s
// current epoch (0: all of them). With `ranks`, each rank runs its contiguous share of
// those batches and the statistics are combined as one process's (ema/bn_recompute.h).
void recompute_bn_on(nn::Module& model, data::Loader& loader, int64_t batches, dist::Communicator* ranks = nullptr);

// How many rows of `logits` (N x classes) have their largest value at `labels` (N).
int64_t argmax_matches(const Tensor& logits, const Tensor& labels);
double top1_accuracy(const Predictions& p);  // percent
double mean_nll(const Predictions& p);       // natural log, mean over images

}  // namespace polyak::app
