#include "apps/phema/phema.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "apps/common/checkpoint.h"
#include "apps/common/cli.h"
#include "apps/common/datasets.h"
#include "apps/eval/checkpoint_model.h"
#include "apps/eval/eval.h"
#include "apps/phema/reconstruct.h"
#include "apps/report/report.h"
#include "apps/train/config.h"
#include "engine/io/atomic_file.h"
#include "engine/parallel.h"

namespace polyak::app {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {
std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::stringstream list(text);
  std::string item;
  while (std::getline(list, item, ',')) items.push_back(item);
  return items;
}
}  // namespace

void add_phema_flags(CLI::App& app, PhemaConfig& c) {
  app.add_option("run", c.run_dir, "run folder of a training run with --phema (it holds phema/ and config.json)")
      ->required();
  app.add_option_function<std::string>(
         "--sigma-rel", [&c](const std::string& v) { c.sigma_rels = split_list(v); },
         "power-average targets: relative widths in (0, 0.288), comma-separated")
      ->default_str("0.03,0.05,0.08,0.1,0.13,0.2");
  app.add_option_function<std::string>(
         "--ema", [&c](const std::string& v) { c.exponentials = split_list(v); },
         "exponential-average targets: decay@period (T in steps), comma-separated, e.g. 0.998@1,0.99@16; 'run': "
         "the run's own --ema-decays");
  app.add_option_function<std::string>(
         "--ema-warmup", [&c](const std::string& v) { c.warmup = v == "on"; },
         "the exponential targets' warm-up min(a, (t+1)/(t+10)) as in training: on or off")
      ->check(CLI::IsMember({"on", "off"}))
      ->default_str("on");
  app.add_option("--step", c.step, "rebuild the averages as they were at this step (0: the last snapshot's)")
      ->capture_default_str();
  app.add_option("--max-residual", c.max_residual,
                 "refuse a target whose profile the snapshots miss by more than this share (relative L2^2)")
      ->capture_default_str();
  app.add_flag("!--no-eval", c.evaluate, "only fit and write the reconstructions");
  app.add_option("--bn-recompute-batches", c.bn_recompute_batches, "batches of the BN recompute (0: one pass)")
      ->capture_default_str();
  app.add_option("--device", c.device, "cpu or cuda")->capture_default_str();
  app.add_option("--threads", c.threads, "CPU threads (default: all cores)");
}

void PhemaConfig::validate() const {
  if (sigma_rels.empty() && exponentials.empty()) bad_flag("--sigma-rel", "(none)", "at least one target");
  for (const std::string& s : sigma_rels) (void)parse_power_target(s);
  for (const std::string& e : exponentials)
    if (e != "run") (void)parse_exponential_target(e, warmup);
  if (step < 0) bad_flag("--step", std::to_string(step), "an integer >= 0 (0: the last snapshot's)");
  if (!(max_residual > 0 && max_residual <= 1)) bad_flag("--max-residual", number_str(max_residual), "a share in (0, 1]");
  if (bn_recompute_batches < 0) bad_flag("--bn-recompute-batches", std::to_string(bn_recompute_batches), "an integer >= 0");
  if (threads < 0 || threads > 1024) bad_flag("--threads", std::to_string(threads), "an integer from 1 to 1024");
  (void)device_from_flag(device);
  if (!is_folder(run_dir)) bad_flag("run", run_dir, "a run folder");
  require_file("run", (fs::path(run_dir) / "config.json").string());
}

namespace {

struct Rebuilt {
  Target target;
  Fit fit;
  std::string path;  // empty when refused
};

// Fits every target and writes the accepted reconstructions; prints one line each.
std::vector<Rebuilt> rebuild(const PhemaConfig& config, const TrainConfig& run, const std::vector<Snapshot>& snapshots,
                             int64_t step, Device device) {
  std::vector<Target> targets;
  for (const std::string& s : config.sigma_rels) targets.push_back(parse_power_target(s));
  for (const std::string& e : config.exponentials) {
    if (e != "run") {
      targets.push_back(parse_exponential_target(e, config.warmup));
      continue;
    }
    // The run's own averages, as train derived them for its length (the last step).
    const std::optional<ema::EmaOptions> own = run.ema_options(step);
    for (size_t k = 0; own && k < own->decays.size(); ++k) {
      char text[48];
      std::snprintf(text, sizeof text, "%g@%lld", static_cast<double>(own->decays[k]), static_cast<long long>(own->every));
      targets.push_back(parse_exponential_target(text, own->warmup));
    }
  }
  const fs::path out_dir = fs::path(config.run_dir) / "phema_out";
  fs::create_directories(out_dir);
  CheckpointModel m = load_checkpoint_model(snapshots.front().path, run.model, 0, device);
  m.file = {};  // the model is built; its file's memory goes back
  std::printf("%-16s %12s %12s  %s\n", "target", "residual", "condition", "result");
  std::vector<Rebuilt> rebuilt;
  for (const Target& target : targets) {
    Rebuilt r{target, fit_target(snapshots, target, step), ""};
    std::printf("%-16s %12.3e %12.3e  ", target.name.c_str(), r.fit.relative_residual, r.fit.condition);
    if (!(r.fit.relative_residual <= config.max_residual)) {
      std::printf("refused: the snapshots miss %.2f%% of this profile (--max-residual %g); track a nearer "
                  "sigma_rel or snapshot more often\n",
                  100 * r.fit.relative_residual, config.max_residual);
    } else {
      combine_snapshots(*m.model, snapshots, r.fit.weights, m.architecture);
      r.path = (out_dir / (target.name + ".safetensors")).string();
      save_model(r.path, *m.model,
                 {{"polyak.model", m.architecture}, {"polyak.phema.target", target.name},
                  {"polyak.phema.step", std::to_string(step)},
                  {"polyak.phema.residual", number_str(r.fit.relative_residual)}});
      std::printf("%s\n", r.path.c_str());
    }
    rebuilt.push_back(std::move(r));
  }
  return rebuilt;
}

// The eval app's evaluation of the reconstructions on the test set, with the combined
// running statistics or with recomputed ones: eval's JSON rows, by checkpoint. Eval's
// whole document is kept as phema_out/eval_running.json or eval_recomputed.json.
json evaluate(const PhemaConfig& config, const TrainConfig& run, const std::vector<std::string>& paths, bool recompute) {
  EvalConfig e;
  e.checkpoints = paths;
  e.dataset = run.dataset;
  e.data_dir = run.data_dir;
  e.val_split = run.val_split;
  e.seed = run.seed;
  e.train_subset = run.train_subset;
  e.test_subset = run.test_subset;
  e.bn_recompute = recompute ? "on" : "off";
  e.bn_recompute_batches = config.bn_recompute_batches;
  e.batch_size = run.batch_size;
  e.device = config.device;
  const json results = evaluate_checkpoints(e);
  io::write_file_atomically(
      (fs::path(config.run_dir) / "phema_out" / (recompute ? "eval_recomputed.json" : "eval_running.json")).string(),
      results.dump(2) + "\n");
  json rows = json::object();
  for (const json& row : results.at("models")) rows[row.at("checkpoint").get<std::string>()] = row;
  return rows;
}

}  // namespace

int run_phema(PhemaConfig config) {
  config.validate();
  if (config.threads) set_num_threads(config.threads);
  const Device device = device_from_flag(config.device);
  std::ifstream config_file(fs::path(config.run_dir) / "config.json");
  const TrainConfig run = TrainConfig::from_json(std::string(std::istreambuf_iterator<char>(config_file), {}));
  const std::vector<Snapshot> snapshots = list_snapshots(config.run_dir);
  int64_t step = config.step;
  if (step == 0)
    for (const Snapshot& s : snapshots) step = std::max(step, s.step);
  std::printf("phema: %zu snapshots in %s/phema, averages rebuilt at step %lld\n", snapshots.size(),
              config.run_dir.c_str(), static_cast<long long>(step));
  const std::vector<Rebuilt> rebuilt = rebuild(config, run, snapshots, step, device);

  std::vector<std::string> paths;
  for (const Rebuilt& r : rebuilt)
    if (!r.path.empty()) paths.push_back(r.path);
  if (paths.empty()) {
    std::fprintf(stderr, "phema: every target was refused (see the residuals above)\n");
    return 2;
  }
  json running = json::object(), recomputed = json::object();
  if (config.evaluate) {
    running = evaluate(config, run, paths, false);
    recomputed = evaluate(config, run, paths, true);
  }
  json doc = {{"run", config.run_dir}, {"step", step}, {"snapshots", snapshots.size()}, {"targets", json::array()}};
  for (const Rebuilt& r : rebuilt) {
    json t = {{"target", r.target.name}, {"kind", r.target.power ? "power" : "exponential"}};
    if (r.target.power) {
      t["sigma_rel"] = r.target.sigma_rel;
    } else {
      t["decay"] = r.target.decay;
      t["every"] = r.target.every;
      t["warmup"] = r.target.warmup;
    }
    t.update({{"residual", r.fit.relative_residual}, {"condition", r.fit.condition}, {"refused", r.path.empty()}});
    json weights = json::array();
    for (size_t i = 0; i < snapshots.size(); ++i)
      weights.push_back({{"snapshot", fs::path(snapshots[i].path).filename().string()}, {"weight", r.fit.weights[i]}});
    t["weights"] = weights;
    if (!r.path.empty()) t["file"] = r.path;
    if (running.contains(r.path)) t["test_running_bn"] = running[r.path];
    if (recomputed.contains(r.path)) t["test_recomputed_bn"] = recomputed[r.path];
    doc["targets"].push_back(t);
  }
  const fs::path out_dir = fs::path(config.run_dir) / "phema_out";
  io::write_file_atomically((out_dir / "phema.json").string(), doc.dump(2) + "\n");
  if (const std::string sweep = phema_sweep_svg(doc); !sweep.empty())
    io::write_file_atomically((out_dir / "sweep.svg").string(), sweep + "\n");
  std::printf("phema: %s\n", (out_dir / "phema.json").string().c_str());
  return 0;
}

}  // namespace polyak::app
