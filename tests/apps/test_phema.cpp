// Post-hoc EMA: the least-squares solve, the reconstruction of averages from impulse
// snapshots (its error is the profile residual), and a real run whose tracked power
// and exponential averages are rebuilt from other snapshots.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "apps/common/checkpoint.h"
#include "apps/phema/reconstruct.h"
#include "ema/ema.h"
#include "ema/power_profile.h"
#include "engine/io/safetensors.h"
#include "engine/nn/layers.h"
#include "engine/rng.h"
#include "models/registry.h"
#include "support/gradcheck.h"
#include "support/impulse_weights.h"
#include "support/temp_dir.h"

using namespace polyak;
namespace fs = std::filesystem;

namespace {

double relative_error2(const std::vector<double>& got, const std::vector<double>& want) {
  double miss = 0, norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    miss += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return miss / norm;
}

}  // namespace

TEST_CASE("phema: the symmetric solve and its condition number") {
  // G = [[4, 1], [1, 3]], b = [1, 2]: x = [1/11, 7/11]; eigenvalues (7 +- sqrt 5) / 2.
  double condition = 0;
  const std::vector<double> x = app::solve_symmetric({4, 1, 1, 3}, {1, 2}, &condition);
  CHECK(x[0] == doctest::Approx(1.0 / 11));
  CHECK(x[1] == doctest::Approx(7.0 / 11));
  CHECK(condition == doctest::Approx((7 + std::sqrt(5.0)) / (7 - std::sqrt(5.0))));
  // A singular G: the solution lives on the strong direction only, the condition is infinite.
  const std::vector<double> y = app::solve_symmetric({1, 1, 1, 1}, {2, 2}, &condition);
  CHECK(y[0] == doctest::Approx(1.0));
  CHECK(y[1] == doctest::Approx(1.0));
  CHECK(std::isinf(condition));
}

TEST_CASE("phema: rebuilt from impulse snapshots, an average misses its target by exactly the profile residual") {
  // One weight per step (one-hot(s) at step s): each snapshot of a tracked power
  // average is its profile, so the reconstruction is the fitted combination of
  // profiles, and its distance to the target profile is the fit's residual.
  const int64_t steps = 199, every = 10;
  polyak::testing::ImpulseWeights impulses(steps);
  ema::EmaSet set(impulses.model(), {.decays = {}, .every = 1, .warmup = true, .buffers = ema::BufferPolicy::Average,
                        .power_sigma_rels = {0.05f, 0.10f}});
  // The initial weights are a snapshot too (the app reads init.safetensors), as sigma_rel 0.
  std::vector<app::Snapshot> snapshots = {{"init", 0.0, 0}};
  std::vector<std::vector<float>> snapshot_weights = {set.parameters(0).to_vector<float>()};
  for (int64_t s = 1; s <= steps; ++s) {
    impulses.at_step(s);
    set.after_step(s);
    if (s % every == 0 || s == steps)
      for (size_t k = 0; k < set.size(); ++k) {
        snapshots.push_back({"impulse", set.sigma_rel(k), s});
        snapshot_weights.push_back(set.parameters(k).to_vector<float>());
      }
  }
  // Within the snapshots' reach: residuals under 1e-2, and under 5e-2 for an average
  // updated every 4 steps (its updates' weights spread over their periods are steps).
  // (No structured bindings here: clang 14 cannot capture them in CAPTURE's lambda.)
  for (const auto& target_reach : {std::pair{app::parse_power_target("0.13"), 1e-2},
                                   std::pair{app::parse_power_target("0.07"), 1e-2},
                                   std::pair{app::parse_exponential_target("0.97@1", true), 1e-2},
                                   std::pair{app::parse_exponential_target("0.97@4", true), 5e-2}}) {
    const app::Target& target = target_reach.first;
    const double reach = target_reach.second;
    CAPTURE(target.name);
    const app::Fit fit = app::fit_target(snapshots, target, steps);
    std::vector<double> rebuilt(static_cast<size_t>(steps + 1), 0.0);
    for (size_t i = 0; i < snapshots.size(); ++i)
      for (size_t j = 0; j < rebuilt.size(); ++j) rebuilt[j] += fit.weights[i] * snapshot_weights[i][j];
    const double error = relative_error2(rebuilt, app::target_profile(target, steps));
    CHECK(error == doctest::Approx(fit.relative_residual).epsilon(1e-3).scale(1e-9));
    CHECK(fit.relative_residual < reach);
    MESSAGE(target.name << ": residual " << fit.relative_residual << ", condition " << fit.condition);
  }
  // A target far narrower than any tracked average cannot be rebuilt well.
  CHECK(app::fit_target(snapshots, app::parse_power_target("0.005"), steps).relative_residual > 0.02);
}

TEST_CASE("phema: a real run's tracked phema0.13 and ema0.95 rebuilt from the 0.05 and 0.10 snapshots") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  polyak::testing::TempDir run("polyak_phema_run");
  const std::string command = std::string(POLYAK_TRAIN_BIN) +
                              " --model tiny_cnn --epochs 4 --train-subset 2048 --test-subset 500 --eval-every 4"
                              " --ema-decays 0.95 --ema-every 1 --phema 0.05,0.1,0.13 --phema-every 4 --data " +
                              data + " --output " + run.str() + " > " + run.str() + "/log 2>&1";
  REQUIRE(std::system(command.c_str()) == 0);

  std::vector<app::Snapshot> all = app::list_snapshots(run.str()), used;
  int64_t last = 0;
  for (const app::Snapshot& s : all) {
    last = std::max(last, s.step);
    if (s.sigma_rel != static_cast<double>(0.13f)) used.push_back(s);
  }
  CHECK(all.front().step == 0);  // the initial weights, as sigma_rel 0
  CHECK((used.size() - 1) * 3 == (all.size() - 1) * 2);
  char last_name[64];
  std::snprintf(last_name, sizeof last_name, "phema0.13-%09lld.safetensors", static_cast<long long>(last));

  Rng rng(0);
  const auto model = models::create_model("tiny_cnn", 10, rng);
  model->pack_arenas();
  const auto weights = [&](const std::string& path) {
    app::load_model(path, *model, "tiny_cnn");
    return model->parameter_arena().to_vector<float>();
  };
  const auto tracked_phema = weights((fs::path(run.path) / "phema" / last_name).string());
  const auto last_file = io::load_safetensors((fs::path(run.path) / "last.safetensors").string());
  const auto tracked_ema = last_file.at("polyak.ema.ema0.95.params").to_vector<float>();

  const auto relative_distance = [](const std::vector<float>& a, const std::vector<float>& b) {
    double miss = 0, norm = 0;
    for (size_t i = 0; i < b.size(); ++i) {
      miss += std::pow(static_cast<double>(a[i]) - b[i], 2);
      norm += std::pow(static_cast<double>(b[i]), 2);
    }
    return std::sqrt(miss / norm);
  };
  std::vector<std::vector<float>> snapshot_weights;
  for (const app::Snapshot& s : used) snapshot_weights.push_back(weights(s.path));
  for (const auto& [target, tracked] : {std::pair{app::parse_power_target("0.13"), tracked_phema},
                                        std::pair{app::parse_exponential_target("0.95@1", true), tracked_ema}}) {
    const app::Fit fit = app::fit_target(used, target, last);
    app::combine_snapshots(*model, used, fit.weights, "tiny_cnn");
    const double relative = relative_distance(model->parameter_arena().to_vector<float>(), tracked);
    // What the reconstruction is worth: the nearest single snapshot is much further off.
    double nearest = 1e30;
    for (const auto& w : snapshot_weights) nearest = std::min(nearest, relative_distance(w, tracked));
    MESSAGE(target.name << ": profile residual " << fit.relative_residual << ", condition " << fit.condition
                        << ", weights' relative error " << relative << " (nearest snapshot " << nearest << ")");
    CHECK(relative < 0.05);
    CHECK(relative < 0.25 * nearest);
  }

  // The app end to end: fit, write, evaluate with and without BN recompute.
  const std::string phema = std::string(POLYAK_PHEMA_BIN) + " " + run.str() +
                            " --sigma-rel 0.08,0.13 --ema 0.95@1 --max-residual 0.1 --bn-recompute-batches 4 > " + run.str() +
                            "/phema.log 2>&1";
  REQUIRE(std::system(phema.c_str()) == 0);
  std::ifstream in(fs::path(run.path) / "phema_out" / "phema.json");
  const auto doc = nlohmann::json::parse(in);
  REQUIRE(doc["targets"].size() == 3);
  for (const auto& t : doc["targets"]) {
    CHECK_FALSE(t["refused"].get<bool>());
    CHECK(t["test_recomputed_bn"]["accuracy"].get<double>() > 20.0);  // far above chance (10%)
  }
  CHECK(fs::exists(fs::path(run.path) / "phema_out" / "sweep.svg"));
  // Snapshots stored as F16: half the bytes, and the app reads them (as float32).
  polyak::testing::TempDir half_run("polyak_phema_f16");
  const std::string half_command = std::string(POLYAK_TRAIN_BIN) +
                                   " --model tiny_cnn --epochs 1 --train-subset 512 --test-subset 100 --ema-decays none"
                                   " --phema 0.1 --phema-every 2 --phema-dtype f16 --data " + data + " --output " +
                                   half_run.str() + " > " + half_run.str() + "/log 2>&1";
  REQUIRE(std::system(half_command.c_str()) == 0);
  const std::vector<app::Snapshot> halves = app::list_snapshots(half_run.str());
  REQUIRE(halves.size() >= 2);
  const app::Snapshot& half = halves.back();
  CHECK(polyak::testing::read_file(half.path).find(R"("dtype":"F16")") != std::string::npos);
  CHECK(fs::file_size(half.path) * 10 < fs::file_size(all.back().path) * 6);
  int widened = 0;  // the F16 tensors come back as float32 ones
  for (const auto& [name, tensor] : io::load_safetensors(half.path).tensors) widened += tensor.dtype() == DType::F32;
  CHECK(widened > 0);
  const std::string half_phema = std::string(POLYAK_PHEMA_BIN) + " " + half_run.str() +
                                 " --sigma-rel 0.1 --no-eval > /dev/null 2>&1";
  CHECK(std::system(half_phema.c_str()) == 0);

  // A target no snapshot can reach is refused with exit code 2 when it is the only one.
  const std::string refused = std::string(POLYAK_PHEMA_BIN) + " " + run.str() +
                              " --sigma-rel 0.001 --no-eval > /dev/null 2>&1";
  const int status = std::system(refused.c_str());
  CHECK((WIFEXITED(status) ? WEXITSTATUS(status) : -1) == 2);
}
