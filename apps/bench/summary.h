// From the runs of the benchmark to its medians, its ratios and the printed table.
//
// A run is one configuration (an implementation at one thread count) measured once in
// its own process: the numbers of each of its timed windows. A configuration measured
// in several rounds pools the windows of all its runs, and its summary is their median
// (the machines are noisy: the clock drops for tens of seconds at a time, so a run can
// fall in a slow stretch; the median over alternated runs is robust to that). Its peak
// RSS is the largest of its runs'.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace polyak::bench {

struct Run {
  int round = 0;
  std::string implementation;  // "polyak", "pytorch" or "pytorch+tcmalloc"
  nlohmann::ordered_json numbers;      // what measure_polyak / torch_ref.py wrote
};

// One entry per (implementation, threads), in order of first appearance:
// implementation, threads, train_images_per_s, eval_images_per_s, ema_update_us,
// ema_share_of_step, bn_recompute_us_per_image, peak_rss_mib (and peak_device_mib when
// the runs have it).
nlohmann::ordered_json summarize(const std::vector<Run>& runs, int64_t batch);

// For every thread count and every PyTorch implementation summarised: polyak's speed
// over PyTorch's for training, evaluation, the 5-EMA update and the BN recompute (> 1:
// polyak is faster), and polyak's peak RSS over PyTorch's (< 1: polyak uses less).
nlohmann::ordered_json ratios(const nlohmann::ordered_json& summary);

// The summary and the ratios as a table.
std::string table(const nlohmann::ordered_json& summary, const nlohmann::ordered_json& ratios);

}  // namespace polyak::bench
