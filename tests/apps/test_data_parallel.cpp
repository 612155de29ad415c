// Data-parallel training end to end: the train binary under mpiexec (2 and 4 ranks on
// this machine's cores, each under a time limit so that a hang fails instead of
// blocking CI). What must hold, bit for bit: N ranks train exactly what one process
// trains with --accum-steps N (weights, optimiser state, every EMA, power-average
// snapshots, BN-recomputed evaluations, metrics); a run resumed under MPI ends where the
// uninterrupted one does, also after one rank was killed (SIGKILL) and the launcher
// ended the job. Bad setups end with one line from rank 0 and exit code 2.
#include <doctest/doctest.h>

#include <filesystem>
#include <sstream>

#include "apps/child_process.h"
#include "engine/io/safetensors.h"
#include "support/gradcheck.h"
#include "support/metrics_rows.h"
#include "support/same_tensors.h"
#include "support/temp_dir.h"

#ifdef POLYAK_MPIEXEC

namespace fs = std::filesystem;
using polyak::testing::ChildResult;
using polyak::testing::check_same_tensors;
using polyak::testing::Metadata;
using polyak::testing::metrics_results;
using polyak::testing::read_file;
using polyak::testing::run_child;

namespace {

// Open MPI, run as root in a container: its allow-run-as-root variables, and no
// cross-memory attach between the ranks.
const std::vector<std::string> kMpiEnv = {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                                          "OMPI_MCA_btl_vader_single_copy_mechanism=none"};

// `mpiexec -np <ranks> train <args>` (one app context), at most 180 s.
ChildResult run_ranks(int ranks, const std::vector<std::string>& args, std::vector<std::string> env = {}) {
  std::vector<std::string> command = {"180", POLYAK_MPIEXEC};
  std::istringstream flags(POLYAK_MPIEXEC_FLAGS);
  for (std::string flag; flags >> flag;) command.push_back(flag);
  command.insert(command.end(), {"-np", std::to_string(ranks), POLYAK_TRAIN_BIN});
  command.insert(command.end(), args.begin(), args.end());
  env.insert(env.end(), kMpiEnv.begin(), kMpiEnv.end());
  return run_child("/usr/bin/timeout", command, env);
}

// Two app contexts: rank 0 gets `first`, rank 1 `second` (MPMD), to give one rank a
// different flag.
ChildResult run_two_contexts(const std::vector<std::string>& first, const std::vector<std::string>& second) {
  std::vector<std::string> command = {"180", POLYAK_MPIEXEC};
  std::istringstream flags(POLYAK_MPIEXEC_FLAGS);
  for (std::string flag; flags >> flag;) command.push_back(flag);
  command.insert(command.end(), {"-np", "1", POLYAK_TRAIN_BIN});
  command.insert(command.end(), first.begin(), first.end());
  command.insert(command.end(), {":", "-np", "1", POLYAK_TRAIN_BIN});
  command.insert(command.end(), second.begin(), second.end());
  return run_child("/usr/bin/timeout", command, kMpiEnv);
}

std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

// Two runs' results, byte for byte (the checkpoints' metadata aside: it records the
// ranks and --accum-steps).
void check_same_run(const fs::path& a, const fs::path& b) {
  for (const char* file : {"last.safetensors", "model.safetensors", "best_acc_ema0.99_bn.safetensors"})
    check_same_tensors(a / file, b / file, Metadata::Ignore);
  for (const auto& entry : fs::directory_iterator(a / "phema"))
    check_same_tensors(entry.path(), b / "phema" / entry.path().filename(), Metadata::Ignore);
  CHECK(metrics_results(a / "metrics.jsonl") == metrics_results(b / "metrics.jsonl"));
  CHECK(read_file(a / "selection.json") == read_file(b / "selection.json"));
}

// tiny_cnn on 512 CIFAR-10 images (a quarter held out): 12 steps of 32 per epoch, two
// EMAs and a power average updated every step, BN recomputed at every evaluation.
std::vector<std::string> small_run(const std::string& data) {
  return {"--model", "tiny_cnn", "--epochs", "2", "--train-subset", "512", "--test-subset", "256", "--val-split", "0.25",
          "--batch-size", "32", "--ema-decays", "0.9,0.99", "--ema-every", "1", "--phema", "0.1", "--bn-recompute",
          "epoch", "--bn-recompute-batches", "3", "--threads", "1", "--data", data};
}

}  // namespace

TEST_CASE("data-parallel: N ranks train bit for bit what one process trains with --accum-steps N") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  polyak::testing::TempDir tmp("polyak_dp");
  for (const int ranks : {2, 4}) {
    CAPTURE(ranks);
    const fs::path job = tmp.path / ("ranks" + std::to_string(ranks)), one = tmp.path / ("accum" + std::to_string(ranks));
    const ChildResult r = run_ranks(ranks, with(small_run(data), {"--output", job.string()}));
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    CHECK(r.output.find("data-parallel: " + std::to_string(ranks) + " rank(s)") != std::string::npos);
    const ChildResult a = run_child(POLYAK_TRAIN_BIN, with(small_run(data), {"--accum-steps", std::to_string(ranks),
                                                                             "--output", one.string()}));
    REQUIRE_MESSAGE(a.exit_code == 0, a.output);
    check_same_run(job, one);
  }
}

TEST_CASE("data-parallel: a rank killed mid-run ends the job; resumed under mpiexec, the run ends as the uninterrupted one") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  polyak::testing::TempDir tmp("polyak_dp_kill");
  const fs::path whole = tmp.path / "whole", killed = tmp.path / "killed";
  const auto args = [&](const fs::path& out) { return with(small_run(data), {"--save-every", "5", "--output", out.string()}); };
  const ChildResult reference = run_ranks(2, args(whole));
  REQUIRE_MESSAGE(reference.exit_code == 0, reference.output);

  // Rank 1 kills itself after step 14: the launcher must end rank 0 too (no hang: the
  // time limit would give exit code 124), and the checkpoint of step 12 stays.
  const ChildResult lost = run_ranks(2, args(killed), {"POLYAK_FAULT_KILL_RANK=1@14"});
  CHECK_MESSAGE(lost.exit_code != 0, lost.output);
  CHECK(lost.exit_code != 124);
  const auto checkpoint = polyak::io::load_safetensors((killed / "last.safetensors").string());
  CHECK(checkpoint.metadata.at("polyak.step") == "12");
  CHECK(checkpoint.metadata.at("polyak.ranks") == "2");
  const fs::path alone = tmp.path / "alone";  // the same run folder, for a single process below
  fs::copy(killed, alone, fs::copy_options::recursive);

  const ChildResult resumed = run_ranks(2, {"--resume", (killed / "last.safetensors").string(), "--threads", "1"});
  REQUIRE_MESSAGE(resumed.exit_code == 0, resumed.output);
  CHECK(resumed.output.find("no longer bit-identical") == std::string::npos);
  check_same_run(whole, killed);

  // The same checkpoint on one process: it goes on, and says it is no longer the same run.
  const ChildResult single = run_child(POLYAK_TRAIN_BIN, {"--resume", (alone / "last.safetensors").string(), "--threads", "1"});
  REQUIRE_MESSAGE(single.exit_code == 0, single.output);
  CHECK(single.output.find("saved by 2 rank(s), this job has 1") != std::string::npos);
}

TEST_CASE("data-parallel: bad setups (exit code 2) and a diverged run (3) end every rank with one line from rank 0") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  polyak::testing::TempDir tmp("polyak_dp_bad");
  const std::vector<std::string> base = {"--model", "tiny_cnn", "--epochs", "1", "--train-subset", "64", "--test-subset",
                                         "64", "--threads", "1"};
  const auto count = [](const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  };
  SUBCASE("a batch too small for the ranks") {
    const ChildResult r = run_ranks(2, with(base, {"--data", data, "--batch-size", "1", "--output", (tmp.path / "a").string()}));
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(count(r.output, "train: --batch-size 1: its batches") == 1, r.output);
  }
  SUBCASE("one rank cannot read the data") {
    const ChildResult r = run_two_contexts(with(base, {"--data", data, "--batch-size", "16", "--output", (tmp.path / "b").string()}),
                                           with(base, {"--data", "/nonexistent", "--batch-size", "16", "--output", (tmp.path / "b").string()}));
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(count(r.output, "train: rank 1: CIFAR-10: cannot find") == 1, r.output);
  }
  SUBCASE("--seeds, which a job does not run") {
    const ChildResult r = run_ranks(2, with(base, {"--data", data, "--seeds", "0,1", "--output", (tmp.path / "d").string()}));
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(count(r.output, "train: --seeds under mpirun") == 1, r.output);
  }
  SUBCASE("a learning rate that makes the weights overflow") {
    const ChildResult r = run_ranks(2, with(base, {"--data", data, "--batch-size", "16", "--lr", "1e30", "--output",
                                                   (tmp.path / "e").string()}));
    CHECK(r.exit_code == 3);
    CHECK_MESSAGE(count(r.output, "train: training diverged at step") == 1, r.output);
  }
  SUBCASE("ranks with different settings") {
    const ChildResult r = run_two_contexts(with(base, {"--data", data, "--batch-size", "16", "--output", (tmp.path / "c").string()}),
                                           with(base, {"--data", data, "--batch-size", "16", "--seed", "5", "--output",
                                                       (tmp.path / "c").string()}));
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(count(r.output, "train: rank 1: the run's settings differ from rank 0's") == 1, r.output);
  }
}

#endif  // POLYAK_MPIEXEC
