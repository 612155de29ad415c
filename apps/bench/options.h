// The bench app's command line: its flags, bound to Options, and the checks made on
// them before any run starts.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "apps/bench/measure.h"

namespace CLI {
class App;
}

namespace polyak::bench {

struct Options {
  Settings settings;  // settings.threads: each of `threads` in turn
  std::string device_name = "cpu";
  std::vector<int> threads = {1, 2};
  int rounds = 0;  // 0: 3 with --compare-torch, else 1
  bool compare_torch = false, worker = false;
  std::optional<float> weight_decay;
  std::string python, torch_script = POLYAK_TORCH_REF, tcmalloc, json_path;

  // Fills what depends on other flags (the device, the weight decay, a GPU's threads)
  // and checks them; throws std::invalid_argument naming the flag and value.
  void resolve(bool threads_given);
};

void add_bench_flags(CLI::App& app, Options& options);

}  // namespace polyak::bench
