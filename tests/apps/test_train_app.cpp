// The train app end to end: exact resume, the run folder, and clear errors for bad flags.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/io/safetensors.h"
#include "support/gradcheck.h"
#include "support/metrics_rows.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;
using polyak::testing::metrics_results;
using polyak::testing::read_file;

namespace {

struct Result {
  int exit_code;
  std::string output;
};

// Runs the train binary with `args`, capturing stdout and stderr.
Result train(const std::string& args) {
  const fs::path log = fs::temp_directory_path() / "polyak_train_test.log";
  const std::string command = std::string(POLYAK_TRAIN_BIN) + " " + args + " > " + log.string() + " 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text.str()};
}

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("polyak_test_" + name);
  fs::remove_all(dir);
  return dir;
}

}  // namespace

TEST_CASE("train app: a run stopped inside an epoch and resumed is bit-identical to the uninterrupted run") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  const std::string common =
      "--model tiny_cnn --epochs 3 --train-subset 1024 --test-subset 500 --val-split 0.1 --eval-every 3 --ema-decays 0.9,0.99 "
      "--bn-recompute epoch --bn-recompute-batches 2 --data " + data;
  const fs::path whole = fresh_dir("whole"), parts = fresh_dir("parts");
  const Result a = train(common + " --output " + whole.string());
  REQUIRE_MESSAGE(a.exit_code == 0, a.output);
  for (const char* file : {"config.json", "metrics.jsonl", "init.safetensors", "last.safetensors", "model.safetensors",
                           "selection.json", "reliability.json", "best_acc_ema0.99.safetensors"})
    CHECK_MESSAGE(fs::exists(whole / file), file);

  // 8 steps per epoch: stop in the middle of epoch 2, then resume to the end.
  const Result b1 = train(common + " --max-steps 12 --output " + parts.string());
  REQUIRE_MESSAGE(b1.exit_code == 0, b1.output);
  CHECK(!fs::exists(parts / "model.safetensors"));
  const Result b2 = train("--resume " + (parts / "last.safetensors").string());
  REQUIRE_MESSAGE(b2.exit_code == 0, b2.output);

  const auto x = polyak::io::load_safetensors((whole / "last.safetensors").string());
  const auto y = polyak::io::load_safetensors((parts / "last.safetensors").string());
  REQUIRE(x.tensors.size() == y.tensors.size());
  for (size_t i = 0; i < x.tensors.size(); ++i) {
    CAPTURE(x.tensors[i].first);
    CHECK(x.tensors[i].first == y.tensors[i].first);
    const size_t bytes = static_cast<size_t>(x.tensors[i].second.numel()) * polyak::dtype_size(x.tensors[i].second.dtype());
    CHECK(std::memcmp(x.tensors[i].second.raw_data(), y.tensors[i].second.raw_data(), bytes) == 0);
  }
  CHECK(x.metadata == y.metadata);
  CHECK(metrics_results(whole / "metrics.jsonl") == metrics_results(parts / "metrics.jsonl"));
  CHECK(read_file(whole / "selection.json") == read_file(parts / "selection.json"));
  CHECK(read_file(whole / "best_acc_ema0.99.safetensors") == read_file(parts / "best_acc_ema0.99.safetensors"));
  CHECK(read_file(whole / "last.safetensors") == read_file(parts / "last.safetensors"));
}

TEST_CASE("train app: bad flags and inputs get one clear line and exit code 2") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  const std::string out = fresh_dir("bad").string();
  const std::string base = " --data " + data + " --output " + out;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--epochs -1", "--epochs -1: expected an integer from 1 to 100000"},
      {"--model resnet19", "--model resnet19: expected one of"},
      {"--lr 0", "--lr 0: expected a positive number"},
      {"--val-split 1.5", "--val-split 1.5: expected a fraction in [0, 1)"},
      {"--label-noise 0.2 --noise-type gauss", "--noise-type gauss: expected sym or asym"},
      {"--train-subset 100 --batch-size 128 --model tiny_cnn", "--batch-size 128: larger than the 100 training images"},
      {"--bogus-flag 3", "bogus-flag"},
  };
  for (const auto& [flags, message] : cases) {
    const std::string& shown = flags;  // (clang 14 cannot capture a structured binding)
    CAPTURE(shown);
    const Result r = train(flags + base);
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(r.output.find(message) != std::string::npos, r.output);
  }
  const Result missing = train("--data /nonexistent/cifar --output " + out);
  CHECK(missing.exit_code == 2);
  CHECK(missing.output.find("/nonexistent/cifar") != std::string::npos);
  CHECK(missing.output.find("cifar-10-binary.tar.gz") != std::string::npos);
}
