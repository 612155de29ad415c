// bench: throughput of the engine on a model of the zoo at a given batch size:
// training step (forward, backward, SGD update) and evaluation forward in images/s,
// the update of K = 5 EMAs in microseconds and as a share of a step, a BN-recompute
// pass (train-mode forward without gradients) in microseconds per image, and the peak
// RSS; at each thread count of --threads. Random inputs: this measures compute, not
// data loading. Never run as a timed test.
//
//   bench --model resnet20 --threads 1,2
//   bench --model resnet18 --compare-torch --json out.json
//
// Every configuration runs in a child process of its own (this binary with --worker,
// or apps/bench/torch_ref.py), one at a time, so its peak RSS is its own. With
// --compare-torch the same model and recipe run in PyTorch, with its default allocator
// and with tcmalloc preloaded (as PyTorch is usually deployed), alternated with ours
// over --rounds rounds whose order rotates, and the table compares the medians.
//
// --json FILE writes every number:
//   {model, batch_size, device, weight_decay, windows, steps, rounds, threads: [..],
//    pytorch: {python, tcmalloc: path or null, torch_version}   (with --compare-torch)
//    runs: [{round, implementation, threads, parameters, train_images_per_s: [per window],
//            eval_images_per_s: [..], ema_update_us: [..], bn_recompute_us_per_image: [..],
//            peak_rss_kib, (polyak on a GPU) peak_device_mib: {in_use, reserved}}, ..],
//    summary: [see summary.h], ratios: [see summary.h]}
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include "apps/bench/child.h"
#include "apps/bench/measure.h"
#include "apps/bench/options.h"
#include "apps/bench/summary.h"
#include "apps/common/cli.h"

using namespace polyak;
using namespace polyak::bench;

namespace {

// An implementation the rounds alternate: how to start one of its runs.
struct Implementation {
  std::string name;
  std::vector<std::string> command;  // without the per-configuration flags
  ChildOptions child;
};

// The flags both workers (ours and torch_ref.py) take for one configuration.
std::vector<std::string> configuration_flags(const Settings& s, const std::string& device_name) {
  std::vector<std::string> flags = {"--model", s.model,
                                    "--batch-size", std::to_string(s.batch),
                                    "--threads", std::to_string(s.threads),
                                    "--windows", std::to_string(s.windows),
                                    "--steps", std::to_string(s.steps),
                                    "--weight-decay", app::number_str(s.weight_decay),
                                    "--device", device_name};
  if (s.tf32) flags.push_back("--tf32");
  if (s.deterministic) flags.push_back("--deterministic");
  return flags;
}

// The first of the candidates that has torch installed. Looked up, not imported: an
// import takes seconds, and the runs report the version anyway.
std::string find_torch_python(const std::string& chosen) {
  const std::vector<std::string> candidates =
      chosen.empty() ? std::vector<std::string>{"/usr/bin/python3", "python3"} : std::vector<std::string>{chosen};
  ChildOptions quiet;
  quiet.quiet = true;
  for (const std::string& python : candidates) {
    try {
      const std::string has_torch = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)";
      if (run_child({python, "-c", has_torch}, quiet).exit_code == 0) return python;
    } catch (const std::runtime_error&) {  // no such program: try the next
    }
  }
  if (!chosen.empty()) throw std::invalid_argument("--python " + chosen + ": has no torch");
  throw std::invalid_argument("--compare-torch: no Python with torch (tried /usr/bin/python3, python3); "
                              "name one with --python");
}

// Debian's libtcmalloc-minimal4, or "" when it is not installed.
std::string find_tcmalloc() {
  for (const char* dir : {"/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                          "/usr/local/lib"}) {
    const std::filesystem::path library = std::filesystem::path(dir) / "libtcmalloc_minimal.so.4";
    std::error_code ec;
    if (std::filesystem::exists(library, ec)) return library.string();
  }
  return "";
}

Run run_once(const Implementation& implementation, const Settings& settings, const std::string& device_name,
             int round) {
  std::vector<std::string> command = implementation.command;
  for (const std::string& flag : configuration_flags(settings, device_name)) command.push_back(flag);
  const ChildResult result = run_child(command, implementation.child);
  const std::string what = implementation.name + " with --threads " + std::to_string(settings.threads);
  if (result.exit_code != 0)
    throw std::runtime_error(what + " failed (exit code " + std::to_string(result.exit_code) + ")");
  nlohmann::ordered_json numbers = nlohmann::ordered_json::parse(result.output, nullptr, false);
  if (numbers.is_discarded() || !numbers.is_object()) throw std::runtime_error(what + ": its output is not JSON");
  const bool wants_tcmalloc = implementation.name == "pytorch+tcmalloc";
  if (numbers.contains("tcmalloc") && numbers["tcmalloc"] != wants_tcmalloc)
    throw std::runtime_error(what + ": tcmalloc " + (wants_tcmalloc ? "did not load" : "is preloaded already"));
  return {round, implementation.name, std::move(numbers)};
}

int run_bench(Options& o) {
  if (o.worker) {
    o.settings.threads = o.threads[0];
    std::printf("%s\n", measure_polyak(o.settings).dump().c_str());
    return 0;
  }
  app::check_output_file("--json", o.json_path);  // before minutes of measuring, not after
  const int rounds = o.rounds > 0 ? o.rounds : o.compare_torch ? 3 : 1;
  nlohmann::ordered_json report = {{"model", o.settings.model},
                                   {"batch_size", o.settings.batch},
                                   {"device", o.device_name},
                                   {"weight_decay", std::stod(app::number_str(o.settings.weight_decay))},
                                   {"windows", o.settings.windows},
                                   {"steps", o.settings.steps},
                                   {"rounds", rounds},
                                   {"threads", o.threads}};

  // This very binary, even if it is rebuilt meanwhile.
  std::vector<Implementation> implementations = {{"polyak", {"/proc/self/exe", "--worker"}, {}}};
  if (o.compare_torch) {
    app::require_file("--torch-script", o.torch_script);
    if (!o.tcmalloc.empty()) app::require_file("--tcmalloc", o.tcmalloc);
    const std::string tcmalloc = o.tcmalloc.empty() ? find_tcmalloc() : o.tcmalloc;
    const std::string python = find_torch_python(o.python);
    report["pytorch"] = {{"python", python}, {"tcmalloc", nullptr}};
    if (tcmalloc.empty()) {
      std::fprintf(stderr, "bench: libtcmalloc_minimal.so.4 not found (Debian: apt-get install libtcmalloc-minimal4); "
                           "PyTorch runs only with its default allocator\n");
    } else {
      report["pytorch"]["tcmalloc"] = tcmalloc;
      ChildOptions preload;
      preload.environment = {"LD_PRELOAD=" + tcmalloc};
      implementations.push_back({"pytorch+tcmalloc", {python, o.torch_script}, preload});
    }
    implementations.push_back({"pytorch", {python, o.torch_script}, {}});
  }

  // Alternated runs; the order rotates from round to round, so that no implementation
  // always runs first (or right after a given other) when the clock drifts.
  std::vector<Run> runs;
  const size_t n = implementations.size();
  for (int round = 0; round < rounds; ++round) {
    for (const int threads : o.threads) {
      for (size_t i = 0; i < n; ++i) {
        const Implementation& implementation = implementations[(i + static_cast<size_t>(round)) % n];
        Settings settings = o.settings;
        settings.threads = threads;
        runs.push_back(run_once(implementation, settings, o.device_name, round + 1));
        const nlohmann::ordered_json& numbers = runs.back().numbers;
        if (numbers.contains("torch_version")) report["pytorch"]["torch_version"] = numbers["torch_version"];
        std::fprintf(stderr, "round %d/%d  threads %d  %-16s  train %.0f img/s (median of %zu windows)\n", round + 1,
                     rounds, threads, implementation.name.c_str(),
                     summarize({runs.back()}, o.settings.batch)[0]["train_images_per_s"].get<double>(),
                     numbers["train_images_per_s"].size());
      }
    }
  }

  const nlohmann::ordered_json summary = summarize(runs, o.settings.batch);
  const nlohmann::ordered_json compared = ratios(summary);
  std::printf("bench %s  batch %lld  device %s  parameters %lld  weight decay %g\n", o.settings.model.c_str(),
              static_cast<long long>(o.settings.batch), o.device_name.c_str(),
              runs.front().numbers.at("parameters").get<long long>(), o.settings.weight_decay);
  std::printf("medians of %d round(s) x %d windows of %d steps, after warm-up; each run in its own process%s\n", rounds,
              o.settings.windows, o.settings.steps, o.compare_torch ? ", implementations alternated" : "");
  if (o.compare_torch)
    std::printf("PyTorch %s (%s)\n", report["pytorch"]["torch_version"].get<std::string>().c_str(),
                report["pytorch"]["python"].get<std::string>().c_str());
  std::printf("%s", table(summary, compared).c_str());

  if (!o.json_path.empty()) {
    nlohmann::ordered_json& all_runs = report["runs"] = nlohmann::ordered_json::array();
    for (const Run& run : runs) {
      nlohmann::ordered_json entry = {{"round", run.round}, {"implementation", run.implementation}};
      entry.update(run.numbers);
      all_runs.push_back(entry);
    }
    report["summary"] = summary;
    report["ratios"] = compared;
    app::write_output("--json", o.json_path, report.dump(2) + "\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"polyak bench: training and evaluation throughput, 5-EMA update, BN recompute, peak RSS"};
  Options o;
  add_bench_flags(app, o);
  return app::run_app("bench", app, argc, argv, [&] {
    o.resolve(app.count("--threads") > 0);
    return run_bench(o);
  });
}
