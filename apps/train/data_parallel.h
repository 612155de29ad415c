// Data-parallel steps: one optimiser step's batch split over the ranks of a job
// (engine/distributed.h) and, within each rank, over --accum-steps micro-batches.
//
// Parts. The batch of b images (the global --batch-size; the loader builds each rank
// its share, data/loader.h) is cut into P = N K parts in rank order, part p being
// images [floor(p b / P), floor((p + 1) b / P)) for N ranks of K micro-batches. Part
// p's loss is its mean cross-entropy times its share of the batch, n_p / b, so the sum
// of the parts' gradients is the gradient of the batch's mean loss, also when the last
// batch of an epoch does not split evenly.
//
// Order, which makes runs comparable bit for bit: a rank adds its parts' gradients in
// order, then the ranks' sums are added in rank order (dist::sum_in_rank_order). So N
// ranks of one part each compute exactly what one process computes with
// --accum-steps N: ((g_0 + g_1) + g_2) + ..., with the same images in each part.
//
// BatchNorm. Each part normalises with its own batch statistics (as PyTorch's DDP
// does) and moves the running statistics from the values the step started with; after
// the step the P results are averaged, in the same order, and every rank continues
// from that average: running' = (1 - m) running + m mean_p(stat_p) up to rounding. So
// the running statistics are equal on every rank after every step, and what an EMA, an
// evaluation or a checkpoint reads from them does not depend on how the batch was split.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/loader.h"
#include "engine/distributed.h"
#include "engine/nn/module.h"

namespace polyak::app {

struct Part {
  Tensor images, labels;
  float share = 1.0f;  // of the whole batch: n_p / b
};

// This rank's K parts of the batch whose share `mine` is (rank `rank` of `ranks`).
std::vector<Part> split_parts(const data::Batch& mine, int rank, int ranks, int64_t accum_steps);

// What a part's forward pass gave: its mean loss, correct predictions and images.
struct PartResult {
  double loss = 0, correct = 0, images = 0;
};
// Every rank's part results, in part order (rank 0's first), on every rank.
std::vector<PartResult> gather_results(dist::Communicator& ranks, const std::vector<PartResult>& mine);

// A running sum of tensors, part after part: the first is copied, each next one added
// (one IEEE addition per element, in the order of the parts).
class PartSum {
 public:
  void add(const Tensor& t);
  bool empty() const { return !sum_.defined(); }
  const Tensor& sum() const { return sum_; }
  void clear() { sum_ = Tensor(); }

 private:
  Tensor sum_;
};

// The step's gradient and BN running statistics on every rank, from this rank's parts'
// (`gradients` / `statistics`: their sums when the rank had several parts, else empty
// and the model's own arenas hold its one part's): gradients summed over the ranks,
// statistics averaged over all `total_parts` parts.
void combine_parts(dist::Communicator& ranks, nn::Module& model, const PartSum& gradients, const PartSum& statistics,
                   int64_t total_parts);

// The model's buffers (BatchNorm statistics and counters): a copy, and its return.
std::vector<Tensor> copy_buffers(const nn::Module& model);
void restore_buffers(const nn::Module& model, const std::vector<Tensor>& copies);

// What data parallelism cost this rank over some steps: waiting for slower ranks (the
// first exchange of a step, a few numbers) and the all-reduce of the gradients and BN
// statistics (the sums that follow start on every rank at once, so their time is the
// all-reduce's own).
struct ExchangeTimes {
  double wait_seconds = 0, reduce_seconds = 0;
  int64_t steps = 0;
  // ", per step: wait X ms, all-reduce Y ms" ("" before any step).
  std::string per_step() const;
};

// A part's mean loss, from the model's logits and the part's labels.
using PartLoss = std::function<Tensor(const Tensor& logits, const Tensor& labels)>;

// One step's forward and backward passes over this rank's `parts`, each part starting
// from `buffers_before` (the BN buffers at the step's start; may be empty with a single
// part), then the ranks' sums combined: afterwards the model's gradient arena holds the
// step's gradient and its buffers the step's statistics, on every rank. A part whose
// loss is not finite adds no gradient (its result says so). Returns every part's result.
std::vector<PartResult> forward_backward(dist::Communicator& ranks, nn::Module& model, const std::vector<Part>& parts,
                                         const PartLoss& loss_of, const std::vector<Tensor>& buffers_before,
                                         ExchangeTimes& times);

// Every rank drew its initial weights from the same seed (or read them from the same
// checkpoint): rank 0 broadcasts its settings (`config_json`), weights and BN
// statistics, and a rank whose own differ throws std::invalid_argument saying so (ranks
// that run different builds of polyak, or that read different files, would train apart).
void check_same_start(dist::Communicator& ranks, const std::string& config_json, const nn::Module& model);

}  // namespace polyak::app
