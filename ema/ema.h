// EmaSet: K exponential moving averages of one model's weights, kept side by side.
//
// The rule (Morales-Brotons, Vogels & Hendrikx, TMLR 2024): every T optimiser steps,
//   e_k <- a_k e_k + (1 - a_k) w,    a_k = min(decay_k, ((t + 1) / (t + 10))^(T / 16))
// with warm-up, where w are the live weights, t the optimiser steps taken so far
// (counting the one just taken, so t = T at the first update), e_k starts as the
// initial weights and there is no bias correction. The averages never feed back into
// training. The paper's warm-up min(a, (t+1)/(t+10)) is stated at its T = 16; at
// another period it is converted by the paper's own rule for changing T, a' = a^(T/16)
// (App. F), so that it caps every average at the same window in steps, about 1.8 t:
// no average reaches further back than the run has gone. At T = 1 the unconverted
// formula would cap the windows at t / 9 and hold the slow averages in warm-up for most
// of a short run.
//
// Each average is one flat tensor shaped like the model's parameter arena (and one
// like its buffer arena), so one kernel updates all K averages reading every weight
// once, and evaluating average k swaps its memory into the model in O(1).
//
// The set may also track power-function averages (ema/power_profile.h: EDM2's
// post-hoc EMA), given by their relative standard deviations sigma_rel: updated at every
// step t with beta_t = (1 - 1/t)^(gamma + 1), in the same pass over the weights as the
// exponential averages when both update (the clock is the optimiser step, from 1).
// They are named "phema<sigma_rel>" and come after the exponential ones.
//
// Data-parallel (engine/distributed.h): given a communicator of N > 1 ranks, each rank
// keeps and updates only its slice of every average's parameters (dist::aligned_share of
// the arena, on 64-float boundaries), K P / N floats instead of K P, and no message per
// step. The update is elementwise, so the slices are bit for bit the unsharded averages'.
// They are gathered only to evaluate an average (Use) or to save (state_tensors): both
// are then collective calls that every rank makes in the same order. Buffers are
// small and equal on every rank (the trainer averages BN statistics across ranks before
// the averages read them): every rank keeps them whole.
//
// Buffers (BatchNorm running mean/var) follow an explicit policy: Average applies the
// same rule to them (EMAN, Cai et al. 2021; the paper's default), Copy takes the live
// model's. Integer buffers (num_batches_tracked) are not averaged: an average always
// sees the live model's counters.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/distributed.h"
#include "engine/nn/module.h"

namespace polyak::ema {

enum class BufferPolicy { Average, Copy };
BufferPolicy parse_buffer_policy(const std::string& name);  // "average" | "copy"
const char* buffer_policy_name(BufferPolicy policy);

struct EmaOptions {
  std::vector<float> decays = {0.968f, 0.984f, 0.992f, 0.996f, 0.998f};
  int64_t every = 16;  // T: optimiser steps between updates
  bool warmup = true;
  BufferPolicy buffers = BufferPolicy::Average;
  std::vector<float> power_sigma_rels = {};  // power-function averages (post-hoc EMA)
};

// The paper's schedule is T = 16 with its five decays over 200 epochs of 391 steps
// (78,200 steps). Average k spans a window of about T / (1 - a_k) steps: a share
// f_k = 16 / ((1 - a_k) 78200) of the run, from 0.64% (0.968, 31 updates) to 10.2%
// (0.998, 500 updates). For a run of `total_steps` N, scaled_to_run keeps every share
// and gives the fastest window at least 30 updates, by shrinking T before the decays:
//   T' = clamp(floor(f_0 N / 30), 1, 16),   1 - a'_k = T' / (f_k N),
// with 1 - a'_k then rounded to two significant digits (names like ema0.9972; the
// windows move by at most 2.5%). `every` > 0 fixes T' instead. Example: 10 epochs of
// 352 steps (CIFAR-10 less a 10% validation split, batch 128), N = 3,520: f_0 N = 22.5
// steps, so T' = 1 and the decays are 0.956, 0.978, 0.989, 0.9944 and 0.9972. A run
// shorter than 30 / f_0 = 4,700 steps has fewer than 30 steps in its fastest window,
// and gets T' = 1. Decays are clamped to 0.5 only when f_0 N < 2 steps (runs of under
// 313 steps; CIFAR's epoch at batch 128 has 352 to 391).
EmaOptions scaled_to_run(const EmaOptions& paper, int64_t total_steps, int64_t every = 0);

// The kept share a_t of an exponential average of decay `decay` updated every `every`
// steps at step t: min(decay, ((t + 1) / (t + 10))^(every / 16)) with the warm-up, as
// described above; in float, as the update applies it.
float warmed_up_decay(float decay, int64_t every, bool warmup, int64_t t);

class EmaSet {
 public:
  // The model's arenas must be packed; every average starts as its current weights.
  // With `ranks` of more than one rank, the parameters are sharded (see above).
  EmaSet(nn::Module& model, EmaOptions options, dist::Communicator* ranks = nullptr);

  // Exponential averages first (k < exponential_count()), then the power ones.
  size_t size() const { return options_.decays.size() + options_.power_sigma_rels.size(); }
  size_t exponential_count() const { return options_.decays.size(); }
  bool is_power(size_t k) const { return k >= exponential_count(); }
  const EmaOptions& options() const { return options_; }
  float decay(size_t k) const { return options_.decays.at(k); }  // exponential averages
  float sigma_rel(size_t k) const { return options_.power_sigma_rels.at(k - exponential_count()); }
  // "ema0.998", "phema0.05": the name of average k in metrics and file names.
  std::string name(size_t k) const;
  int64_t updates() const { return updates_; }

  // Call after every optimiser step with the number of steps taken so far; updates
  // the exponential averages when that number is a multiple of T, the power averages
  // always. Returns whether it updated the exponential ones.
  bool after_step(int64_t steps_taken);
  // The share of average k kept at step t (its decay after warm-up, or beta_t).
  float effective_decay(size_t k, int64_t steps_taken) const;

  // Average k's parameters: this rank's slice of them when sharded.
  const Tensor& parameters(size_t k) const { return params_.at(k); }
  // The slice of the parameter arena this rank averages (all of it unsharded).
  dist::Range shard() const { return shard_; }
  const Tensor& buffers(size_t k) const { return buffers_.at(k); }

  // While alive, the model computes with average k (its weights and its float
  // buffers); on destruction the live values are back, bit for bit. O(1) both ways:
  // the memory is exchanged, so meanwhile parameters(k) holds the live weights.
  class Use {
   public:
    Use(EmaSet& set, size_t k);
    ~Use();
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;

   private:
    EmaSet& set_;
    size_t k_;
    Tensor whole_;  // sharded: the gathered parameters swapped into the model
  };

  // Checkpoint state: tensors named "polyak.ema.<name>.params|buffers" and metadata
  // with the decays, period, warm-up, policy and update count. load_state checks
  // that the settings match and throws std::invalid_argument naming what differs.
  // The tensors are whole (gathered when sharded), so a checkpoint loads on any
  // number of ranks.
  std::vector<nn::NamedTensor> state_tensors() const;
  std::map<std::string, std::string> state_metadata() const;
  void load_state(const std::vector<nn::NamedTensor>& tensors, const std::map<std::string, std::string>& metadata);

 private:
  static constexpr int64_t kShardAlign = 64;  // floats: a cache line, and whole vectors
  bool sharded() const { return ranks_ != nullptr; }
  // Average k's whole parameter vector (gathered from the ranks when sharded).
  Tensor whole_parameters(size_t k) const;

  nn::Module& model_;
  EmaOptions options_;
  dist::Communicator* ranks_ = nullptr;  // null unless sharded
  dist::Range shard_;
  std::vector<Tensor> params_, buffers_;
  std::vector<double> gammas_;  // of the power averages
  int64_t updates_ = 0;
};

}  // namespace polyak::ema
