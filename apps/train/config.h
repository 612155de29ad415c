// The train app's settings: every flag, its default, its check, and the resolved
// configuration written to config.json and into every training checkpoint.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ema/ema.h"

namespace CLI {
class App;
}

namespace polyak::app {

struct TrainConfig {
  std::string model = "resnet20";
  std::string dataset = "cifar10";
  std::string data_dir;            // "" = default_data_dir(dataset)
  int epochs = 10;
  int64_t batch_size = 128;        // images per optimiser step, over all ranks of a job
  // Micro-batches per step on each rank (gradient accumulation): the batch is split into
  // ranks x accum_steps parts (apps/train/data_parallel.h).
  int64_t accum_steps = 1;
  float lr = 0.1f;
  float momentum = 0.9f;
  bool nesterov = true;
  float weight_decay = -1.0f;      // < 0: the paper's default for the model (see resolve())
  std::string sched = "cosine";
  float warmup_epochs = -1.0f;     // < 0: 5/200 of the run, the paper's fraction
  std::vector<int> milestones;     // multistep epochs; empty: 30%, 60%, 80% of the run
  float gamma = 0.2f;              // multistep factor (/5)
  uint64_t seed = 0;
  std::vector<uint64_t> seeds;     // --seeds: one run per seed into OUTPUT/seed<s>, then their aggregate
  int threads = 0;                 // 0: all cores
  double val_split = 0.0;
  std::string labels_file;         // CIFAR-N style label file
  double label_noise = 0.0;
  std::string noise_type = "sym";
  std::string output;              // "" = runs/<model>_<dataset>_s<seed>
  std::string resume;
  std::string init;
  bool augment = true;
  bool shuffle = true;
  int64_t max_steps = 0;           // 0: no limit
  int64_t save_every = 0;          // also write last.safetensors every N steps (0: at epoch ends only)
  // A non-finite loss or gradient: "stop" the run (exit code 3), or "skip" the step,
  // stopping after more than max_skips skipped steps in a row.
  std::string on_nonfinite = "stop";
  int64_t max_skips = 10;
  int eval_every = 1;
  int64_t train_subset = 0;        // 0: all training images; else the first N (quick runs, tests)
  int64_t test_subset = 0;         // 0: all test images; else the first N
  std::string device = "cpu";      // cpu or cuda
  bool tf32 = false;               // TF32 tensor-core math on the GPU (off: exact FP32)
  bool deterministic = false;      // only deterministic cuDNN algorithms

  // ---- weight averaging (the paper's protocol) ----
  // "scaled": the paper's five decays with T and decays scaled to the run's length
  // (ema::scaled_to_run); "paper": exactly 0.968..0.998 at T = 16; "none"; or a list.
  std::string ema_decays = "scaled";
  int64_t ema_every = 0;           // 0: 16, or scaled with "scaled"
  bool ema_warmup = true;
  std::string ema_buffers = "average";
  // Power-function averages (post-hoc EMA, ema/power_profile.h): sigma_rel values, e.g.
  // "0.05,0.10"; their snapshots go to <output>/phema/ every phema_every steps (0: about
  // 20 per run) and at the end, for apps/phema to reconstruct any average from.
  std::string phema;
  int64_t phema_every = 0;
  std::string phema_dtype = "f32";  // of the snapshots: f32, or f16 (half the size)
  std::string bn_recompute = "none";   // none, epoch or end
  int64_t bn_recompute_batches = 0;    // 0: one full pass over the training split

  // Fills the "auto" values (data dir, weight decay, warm-up, milestones, output).
  void resolve();
  // The averaging settings for a run of `total_steps` optimiser steps, or nullopt
  // when averaging is off. Throws std::invalid_argument for a malformed list.
  std::optional<ema::EmaOptions> ema_options(int64_t total_steps) const;
  // The snapshot period of the power averages in a run of `total_steps` steps.
  int64_t phema_period(int64_t total_steps) const;
  // Range and consistency checks; throws std::invalid_argument naming the flag, the
  // value and what is expected.
  void validate() const;
  std::string to_json() const;
  // The settings that define the run's result, without those of one process
  // (--resume, --max-steps, --threads, --output): what a checkpoint records. It keeps
  // --save-every, which does not change the result, so that a resumed run goes on
  // saving as often.
  TrainConfig definition() const;
  static TrainConfig from_json(const std::string& json);
};

// Registers every flag on `app`, bound to `config`.
void add_train_flags(CLI::App& app, TrainConfig& config);

}  // namespace polyak::app
