#include "apps/bench/options.h"

#include <CLI/CLI.hpp>

#include "apps/common/cli.h"
#include "engine/parallel.h"
#include "models/registry.h"

namespace polyak::bench {

void Options::resolve(bool threads_given) {
  settings.device = app::device_from_flag(device_name);
  settings.weight_decay = weight_decay.value_or(models::default_weight_decay(settings.model));
  if (!threads_given && device_name == "cuda") threads = {num_threads()};
  if (threads.empty()) app::bad_flag("--threads", "(none)", "one or more thread counts");
  if (worker && threads.size() != 1) app::bad_flag("--worker --threads", std::to_string(threads.size()) + " values", "one");
}

void add_bench_flags(CLI::App& app, Options& o) {
  Settings& s = o.settings;
  s.model = "resnet20";
  app.add_option("--model", s.model, "model name")->capture_default_str()->check(CLI::IsMember(models::model_names()));
  app.add_option("--batch-size", s.batch, "images per step")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--threads", o.threads, "CPU thread counts, each measured (default 1,2; on a GPU: the cores)")
      ->delimiter(',')
      ->check(CLI::Range(1, 256));
  app.add_option("--windows", s.windows, "timed windows per run (the median is reported)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--steps", s.steps, "steps per window")->capture_default_str()->check(CLI::Range(1, 1000));
  app.add_option("--rounds", o.rounds, "rounds of runs (default 3 with --compare-torch, else 1)")
      ->check(CLI::Range(1, 100));
  app.add_option("--weight-decay", o.weight_decay, "SGD weight decay (default: train's, 1e-4 ResNets, 5e-4 others)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--device", o.device_name, "cpu or cuda")->capture_default_str();
  app.add_flag("--tf32", s.tf32, "GPU: TF32 tensor-core math (default: exact FP32)");
  app.add_flag("--deterministic", s.deterministic, "GPU: only deterministic cuDNN algorithms");
  app.add_flag("--compare-torch", o.compare_torch, "also run the same model and recipe in PyTorch, and compare");
  app.add_option("--python", o.python, "Python that can import torch (default: /usr/bin/python3, else python3)");
  app.add_option("--torch-script", o.torch_script, "the PyTorch reference script")->capture_default_str();
  app.add_option("--tcmalloc", o.tcmalloc, "libtcmalloc_minimal.so.4 to preload into PyTorch (default: found)");
  app.add_option("--json", o.json_path, "write every measured number to this file (- for stdout)");
  app.add_flag("--worker", o.worker, "measure one configuration in this process, print it as JSON")->group("");
}

}  // namespace polyak::bench
