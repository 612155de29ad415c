// Post-hoc EMA: an average of any length, rebuilt after training from the snapshots of
// the power-function averages a run tracked (train --phema 0.05,0.10; ema/ema.h).
//
// Each snapshot i is an average with a known profile p_i over the run's steps
// (ema/power_profile.h). For a target profile q (a power average of any sigma_rel, or
// an exponential average of decay alpha every T steps with the paper's warm-up) the
// weights x minimise |sum_i x_i p_i - q|^2 among those that sum to 1 (an average of
// averages is an average), from the normal equations G x = b in float64,
// solved through the eigendecomposition of the Gram matrix G (LAPACK's dsyev from
// OpenBLAS) so that the condition number comes with the solution, and directions of G
// too weak to carry information (below 1e-12 of the strongest) are dropped rather than
// amplified. The reconstruction is then sum_i x_i snapshot_i, read one snapshot at a
// time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/nn/module.h"

namespace polyak::app {

// A snapshot file <run>/phema/<name>-<step>.safetensors, named by the train app.
struct Snapshot {
  std::string path;
  double sigma_rel = 0;
  int64_t step = 0;
};
// Every snapshot of `run_dir`, by sigma_rel then step, and the run's initial weights
// (init.safetensors, as sigma_rel 0 at step 0: an exponential average keeps a share of
// them); std::invalid_argument naming the folder when it has no snapshot, or a file
// whose name does not parse.
std::vector<Snapshot> list_snapshots(const std::string& run_dir);

// What to rebuild: a power average ("phema0.08") or an exponential one ("ema0.998@1",
// decay and period T, with the paper's warm-up unless warmup is false), at `step`.
struct Target {
  std::string name;
  bool power = true;
  double sigma_rel = 0;
  double decay = 0;
  int64_t every = 1;
  bool warmup = true;
};
// "0.08" -> power; "0.998@4" or "ema0.998@4" -> exponential every 4 steps ("@1" when
// no period is given). Otherwise std::invalid_argument naming the flag (--sigma-rel,
// --ema) and the text.
Target parse_power_target(const std::string& text);
Target parse_exponential_target(const std::string& text, bool warmup);
// The target's profile at `step`; an exponential one updated every T > 1 steps with the
// weight of each update spread evenly over the T steps up to it (see the definition).
std::vector<double> target_profile(const Target& target, int64_t step);

struct Fit {
  std::vector<double> weights;   // one per snapshot
  double relative_residual = 0;  // |sum x_i p_i - q|^2 / |q|^2
  double condition = 0;          // of the Gram matrix (largest / smallest eigenvalue)
};
// The least-squares combination of the snapshots (those taken at or before `step`)
// that best matches the target's profile at `step`, among the combinations whose
// weights sum to 1 (solve_average_weights).
Fit fit_target(const std::vector<Snapshot>& snapshots, const Target& target, int64_t step);

// G x = b for a symmetric positive semi-definite G (n x n, row-major): the solution on
// the eigenvectors whose eigenvalue exceeds 1e-12 of the largest, and G's condition
// number (infinite when an eigenvalue is not positive).
std::vector<double> solve_symmetric(const std::vector<double>& gram, const std::vector<double>& rhs,
                                    double* condition);

// The x minimising |sum_i x_i p_i - q|^2 subject to sum_i x_i = 1, from the normal
// equations' G and b. Every profile and every target sums to 1 (each is an average of
// the run's weights), and the constraint keeps the reconstruction one: its profile's
// total weight is exactly 1. Without it a small error in the total multiplies the
// weights' large common part (their mean over the run), which dwarfs the differences
// along the run that the averages are about: on a 4-epoch tiny_cnn run the free fit
// of an exponential average had a profile residual of 0.17% but missed the tracked
// weights by 1.3%. `condition` is that of the reduced system solved.
std::vector<double> solve_average_weights(const std::vector<double>& gram, const std::vector<double>& rhs,
                                          double* condition);

// Loads each snapshot with a non-zero weight into `model` in turn and leaves in the
// model's arenas (parameters and float buffers) sum_i weights[i] * snapshot_i: at most
// the model and one snapshot file in memory at once. One target per call, so every
// target reads the snapshots again: combining all T targets in one pass would hold T
// float64 sums of the model (1 GB for 12 targets of ResNet-18) to save re-reading
// files that the page cache holds (12 ResNet-20 targets from 41 snapshots: 0.48 s in
// all, fits included).
void combine_snapshots(nn::Module& model, const std::vector<Snapshot>& snapshots, const std::vector<double>& weights,
                       const std::string& architecture);

}  // namespace polyak::app
