// The phema app: post-hoc EMA on a finished run (apps/phema/reconstruct.h).
//
//   phema RUN --sigma-rel 0.03,0.05,0.08,0.1,0.13,0.2 --ema 0.998@1,0.999@1
//
// For every target it prints the fit (relative residual of the profile, condition
// number of the Gram matrix) and refuses a target whose residual exceeds
// --max-residual; it writes each accepted reconstruction to RUN/phema_out/<target>.safetensors
// (a model-only checkpoint under PyTorch's names), evaluates them on the test set with the
// run's running statistics combined and with BN statistics recomputed on training
// batches (the eval app's code), and writes RUN/phema_out/phema.json and the sweep
// RUN/phema_out/sweep.svg (test accuracy against sigma_rel, both BN settings).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace polyak::app {

struct PhemaConfig {
  std::string run_dir;
  std::vector<std::string> sigma_rels = {"0.03", "0.05", "0.08", "0.1", "0.13", "0.2"};
  std::vector<std::string> exponentials;  // decay@period
  bool warmup = true;                     // of the exponential targets (the paper's)
  int64_t step = 0;                       // 0: the last snapshot's step
  double max_residual = 0.02;
  bool evaluate = true;
  int64_t bn_recompute_batches = 0;       // 0: one pass over the training split
  std::string device = "cpu";
  int threads = 0;

  void validate() const;  // std::invalid_argument naming the flag and value
};

void add_phema_flags(CLI::App& app, PhemaConfig& config);

// The process exit code: 0 when every target was rebuilt, 2 when all were refused or
// the input is bad (thrown as std::invalid_argument, io::SafetensorsError, data::DataError).
int run_phema(PhemaConfig config);

}  // namespace polyak::app
