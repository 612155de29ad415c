// One configuration of the benchmark, measured in this process: the numbers of every
// timed window, as JSON, in the layout apps/bench/torch_ref.py writes for PyTorch
// (see bench.cpp for the keys). The bench runs each configuration in a child process
// of its own, so that the peak RSS it reports belongs to that configuration alone.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "engine/tensor.h"

namespace polyak::bench {

struct Settings {
  std::string model;
  int64_t batch = 128;
  int threads = 1;
  int windows = 5;  // timed windows, after a warm-up; the caller takes their median
  int steps = 5;    // training or evaluation steps per window
  float weight_decay = 1e-4f;
  Device device = Device::CPU;
  bool tf32 = false, deterministic = false;
};

// Training step (forward, backward, SGD with Nesterov momentum), evaluation forward,
// the update of five EMAs and a BN-recompute pass, on random CIFAR-shaped inputs.
nlohmann::ordered_json measure_polyak(const Settings& settings);

}  // namespace polyak::bench
