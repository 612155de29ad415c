// train --seeds 0,1,2: one configuration trained once per seed, one run after another,
// into RUN/seed<s> (each an ordinary run folder: the same command again resumes a seed
// that stopped half-way from its last.safetensors and skips the complete ones), then
// the aggregate over the seeds in RUN/aggregate.json, printed as a table and shown by
// RUN/report.html (the seeds' curves as mean and range, and the aggregate table).
//
// The aggregate (the paper's Tables 1, 3 and 5, 3 seeds each): for every reported row
// of selection.json (SGD final, SGD best, EMA (acc.), EMA (loss), EMA (acc.)(BN),
// EMA (loss)(BN)) present in every seed, the row's checkpoint of each seed is evaluated
// on the test set: accuracy, NLL, ECE (100 equal-mass bins, the paper's) before and after
// temperature scaling (T fitted on that seed's clean validation split), as mean, sample
// standard deviation and the values; and between every pair of seeds, the churn (% of
// test images whose predicted class differs) and the mean Jensen-Shannon divergence of
// the softmax outputs, in nats and in bits (log base 2, at most 1), as mean and standard
// deviation over the pairs.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/train/config.h"

namespace polyak::app {

// Runs every seed of config.seeds (non-empty) and the aggregate; returns the exit code.
int run_seeds(const TrainConfig& config);

// The aggregate of the complete seed runs in `run_dirs` (see above), all trained with
// `config` but for their seeds (`seeds`, in the same order).
nlohmann::json aggregate_seeds(const std::vector<std::string>& run_dirs, const std::vector<uint64_t>& seeds,
                               const TrainConfig& config);

// The aggregate as a plain-text table.
std::string aggregate_table(const nlohmann::json& aggregate);

}  // namespace polyak::app
