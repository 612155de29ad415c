// Recomputing BatchNorm statistics for a given set of weights.
//
// Averaged weights were never trained with the running statistics they carry, so
// before evaluating an average (and for large averaging windows it matters a lot) the
// statistics are recomputed: every BatchNorm layer's running mean and variance are
// reset, switched to a cumulative average (momentum = None), and the model runs in
// training mode, without gradients, over a number of training batches. Each layer
// then holds the average over those batches of its batch means and of its unbiased
// batch variances (what torch.optim.swa_utils.update_bn computes; here each batch's
// statistics are kept and summed in float64 in batch order, then divided once); with
// batches of equal size the mean is the exact mean of the layer's inputs.
//
// Data-parallel: each rank runs its own share of the batches (contiguous, in rank
// order), the per-batch statistics are gathered, and every rank sums all of them in
// the same global batch order: the statistics are bit for bit those of one process
// running every batch. They are a few floats per channel per batch (for ResNet-20 and
// 352 batches, 2 MB), so gathering them whole costs little and keeps the order exact.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "engine/distributed.h"
#include "engine/nn/module.h"

namespace polyak::ema {

// Produces the next batch of images, or std::nullopt when the pass is over.
using BatchSource = std::function<std::optional<Tensor>()>;

// Recomputes the statistics of every BatchNorm2d in `model` from up to `max_batches`
// batches of `source` (0: until it is exhausted), and with `ranks`, from every rank's
// batches (each rank passes its own share). Returns the number of batches used (on all
// ranks). The model is left in eval mode with each layer's momentum as it was.
int64_t recompute_bn(nn::Module& model, const BatchSource& source, int64_t max_batches = 0,
                     dist::Communicator* ranks = nullptr);

// Saves every buffer of `model` (float and integer) and puts them back on destruction,
// so statistics can be recomputed for an evaluation without losing the ones the model
// (or the average swapped into it) carries.
class BufferBackup {
 public:
  explicit BufferBackup(nn::Module& model);
  ~BufferBackup();
  BufferBackup(const BufferBackup&) = delete;
  BufferBackup& operator=(const BufferBackup&) = delete;

 private:
  std::vector<std::pair<Tensor, Tensor>> saved_;  // (the model's buffer, its copy)
};

}  // namespace polyak::ema
