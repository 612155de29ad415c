// Crash safety of the train app: a run killed (SIGKILL) again and again, at steps and
// in the middle of its file writes (checkpoints among them), and resumed after each
// kill from the checkpoint on disk, must end bit for bit where the uninterrupted run
// ends: the same final weights, averages, optimiser state and metrics.
//
// The kill points come from a seeded RNG, so a failure reproduces. Two hooks of the
// binaries place them exactly: POLYAK_FAULT_STOP_AT_STEP=k stops the process after
// optimiser step k and the test kills it; POLYAK_FAULT_KILL_IN_WRITE=n kills it half-way
// through its n-th atomic file write (engine/io/atomic_file.h).
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "apps/child_process.h"
#include "engine/io/atomic_file.h"
#include "engine/io/safetensors.h"
#include "support/gradcheck.h"
#include "support/metrics_rows.h"
#include "support/same_tensors.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;
using polyak::testing::metrics_results;
using polyak::testing::read_file;
using polyak::testing::ChildResult;
using polyak::testing::check_same_tensors;
using polyak::testing::run_child;

namespace {

std::set<std::string> temp_files(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir))
    if (polyak::io::is_temp_file_name(entry.path().filename().string())) names.insert(entry.path().filename().string());
  return names;
}

// Every *.safetensors in `dir` must be complete: a killed write never leaves a torn one.
void check_checkpoints_complete(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    CAPTURE(entry.path().string());
    CHECK_NOTHROW((void)polyak::io::load_safetensors(entry.path().string()));
  }
}

int64_t checkpoint_step(const fs::path& dir) {
  const fs::path last = dir / "last.safetensors";
  if (!fs::exists(last)) return -1;
  return std::stoll(polyak::io::load_safetensors(last.string()).metadata.at("polyak.step"));
}

}  // namespace

TEST_CASE("train app: killed at seeded random steps and inside file writes, resumed each time, ends bit-identical") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  polyak::testing::TempDir tmp("polyak_crash");
  const fs::path whole = tmp.path / "whole", killed = tmp.path / "killed";
  // 512 images, a quarter held out: 384 training images, 12 steps per epoch, 36 in all;
  // a checkpoint every 5 steps and at each epoch end.
  const std::vector<std::string> flags = {"--model", "tiny_cnn", "--epochs", "3", "--train-subset", "512", "--test-subset",
                                          "256", "--val-split", "0.25", "--batch-size", "32", "--ema-decays", "0.9,0.99",
                                          "--ema-every", "1", "--bn-recompute", "epoch", "--bn-recompute-batches", "2",
                                          "--save-every", "5", "--threads", "2", "--data", data};
  constexpr int kSteps = 36;
  const auto fresh = [&](const fs::path& out) {
    std::vector<std::string> args = flags;
    args.insert(args.end(), {"--output", out.string()});
    return args;
  };
  const ChildResult reference = run_child(POLYAK_TRAIN_BIN, fresh(whole));
  REQUIRE_MESSAGE(reference.exit_code == 0, reference.output);

  // The plan: a stop early, mid and late in the run (one in each third of its steps, but
  // after the checkpoint the process starts from), each followed by a kill in one of the
  // next process's first 6 atomic writes. Every process makes at least 6 (a fresh one:
  // config.json, metrics.jsonl, init.safetensors, then checkpoints; a resumed one:
  // metrics.jsonl, then checkpoints, best_*, selection.json, model, reliability.json),
  // so every planned kill happens.
  std::mt19937 rng(20261129);
  std::vector<std::pair<std::string, int>> plan;
  for (int third = 0; third < 3; ++third) {
    plan.emplace_back("POLYAK_FAULT_STOP_AT_STEP", std::uniform_int_distribution<int>(third * 12 + 1, third * 12 + 11)(rng));
    plan.emplace_back("POLYAK_FAULT_KILL_IN_WRITE", std::uniform_int_distribution<int>(1, 6)(rng));
  }
  // The thread count is not part of a checkpoint (the sums over images are split by
  // thread, so it decides the last bits): a resumed run is given the same one, whatever
  // POLYAK_THREADS says.
  const auto resume_or_fresh = [&] {
    const fs::path last = killed / "last.safetensors";
    return fs::exists(last) ? std::vector<std::string>{"--resume", last.string(), "--threads", "2"} : fresh(killed);
  };
  std::set<std::string> left_before;  // temporary files of the previous kill
  std::string log;
  for (const auto& step : plan) {
    const std::string& hook = step.first;
    int value = step.second;
    const bool resume = fs::exists(killed / "last.safetensors");
    const std::vector<std::string> args = resume_or_fresh();
    const int64_t from = checkpoint_step(killed);
    const bool stop = hook == "POLYAK_FAULT_STOP_AT_STEP";
    if (stop) value = std::max<int>(value, static_cast<int>(from) + 1);
    CAPTURE(hook);
    CAPTURE(value);
    REQUIRE(value <= kSteps);
    const ChildResult r = run_child(POLYAK_TRAIN_BIN, args, {hook + "=" + std::to_string(value)});
    REQUIRE_MESSAGE(r.killed(), r.output);
    CHECK(r.stopped == stop);
    check_checkpoints_complete(killed);
    const std::set<std::string> left = temp_files(killed);
    for (const std::string& name : left_before) CHECK_MESSAGE(!left.count(name), (name + " survived the next start"));
    // A killed write leaves its temporary file, and only that; a stop is never inside one.
    CHECK(left.size() == (stop ? 0u : 1u));
    log += (resume ? "resumed at step " + std::to_string(from) : std::string("fresh start")) + ", killed by " + hook + "=" +
           std::to_string(value) + (left.empty() ? "" : " in the write of " + *left.begin()) +
           "; checkpoint now at step " + std::to_string(checkpoint_step(killed)) + "\n";
    left_before = left;
  }
  const ChildResult last = run_child(POLYAK_TRAIN_BIN, resume_or_fresh());
  REQUIRE_MESSAGE(last.exit_code == 0, last.output);
  log += "resumed and completed";
  MESSAGE(log);
  CHECK(temp_files(killed).empty());
  CHECK(checkpoint_step(killed) == kSteps);

  check_same_tensors(whole / "last.safetensors", killed / "last.safetensors");
  check_same_tensors(whole / "model.safetensors", killed / "model.safetensors");
  CHECK(metrics_results(whole / "metrics.jsonl") == metrics_results(killed / "metrics.jsonl"));
  for (const char* file : {"model.safetensors", "last.safetensors", "selection.json", "reliability.json",
                           "best_acc_ema0.99.safetensors", "best_loss_sgd.safetensors"}) {
    CAPTURE(file);
    CHECK(read_file(whole / file) == read_file(killed / file));
  }
}
