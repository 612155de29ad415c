// The train app end to end: exact resume, the run folder, and clear errors for bad flags.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
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
      "--phema 0.1 --phema-every 5 --bn-recompute epoch --bn-recompute-batches 2 --data " + data;
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
  // The power average's snapshots (post-hoc EMA): the same files, byte for byte.
  std::vector<std::string> snapshots;
  for (const auto& entry : fs::directory_iterator(whole / "phema")) snapshots.push_back(entry.path().filename().string());
  CHECK(snapshots.size() == 5);  // steps 5, 10, 15, 20 and the last, 24
  for (const std::string& name : snapshots) {
    CAPTURE(name);
    CHECK(read_file(whole / "phema" / name) == read_file(parts / "phema" / name));
  }
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

// The paper's protocol (Sec. 4.1): early stopping is judged on the running BN
// statistics even when every epoch also evaluates recomputed ones; the selected epochs
// get their statistics recomputed once after training; the six reported rows are in
// selection.json and printed at the end.
TEST_CASE("train app: selection on running BN statistics, recomputed once after training, and the paper's six rows") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  const fs::path dir = fresh_dir("paper_rows");
  const Result r = train("--model tiny_cnn --epochs 3 --train-subset 1024 --test-subset 256 --val-split 0.25 "
                         "--batch-size 64 --ema-decays 0.9,0.99,0.999 --ema-every 1 --bn-recompute epoch "
                         "--bn-recompute-batches 2 --threads 1 --data " + data + " --output " + dir.string());
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("the paper's rows") != std::string::npos);
  const nlohmann::json selection = nlohmann::json::parse(read_file(dir / "selection.json"));
  const nlohmann::json& models = selection.at("models");

  // Each model's selected epochs are those of its best running-BN validation rows.
  std::map<std::string, std::pair<int64_t, double>> best_acc, best_loss;  // model -> (epoch, value)
  std::istringstream lines(read_file(dir / "metrics.jsonl"));
  for (std::string line; std::getline(lines, line);) {
    const nlohmann::json row = nlohmann::json::parse(line);
    if (row.value("split", "") != "val" || row.value("bn", "") != "running" || row.contains("phase")) continue;
    const std::string model = row["model"];
    const double accuracy = row["accuracy"], loss = row["loss"];
    if (!best_acc.count(model) || accuracy > best_acc[model].second) best_acc[model] = {row["epoch"], accuracy};
    if (!best_loss.count(model) || loss < best_loss[model].second) best_loss[model] = {row["epoch"], loss};
  }
  REQUIRE(best_acc.size() == 4);
  for (const auto& item : best_acc) {
    const std::string& model = item.first;
    const std::pair<int64_t, double>& chosen = item.second;
    CAPTURE(model);
    const nlohmann::json& entry = models.at(model);
    CHECK(entry["best_acc"]["epoch"] == chosen.first);
    CHECK(entry["best_loss"]["epoch"] == best_loss[model].first);
    for (const char* key : {"best_acc", "best_loss"}) {
      CHECK(entry[key]["bn"] == "running");
      CHECK(fs::exists(dir / entry[key]["file"].get<std::string>()));
      CHECK(fs::exists(dir / entry[key]["recomputed"]["file"].get<std::string>()));
    }
  }

  const nlohmann::json& reported = selection.at("reported");
  for (const char* row : {"sgd_final", "sgd_best", "ema_acc", "ema_loss", "ema_acc_bn", "ema_loss_bn"})
    CHECK_MESSAGE(reported.contains(row), row);
  CHECK(reported["sgd_final"]["epoch"] == 3);
  CHECK(reported["sgd_best"]["epoch"] == best_acc["sgd"].first);
  // EMA (acc.): the decay whose selected epoch has the best validation accuracy, running BN.
  std::string most_accurate;
  for (const char* ema : {"ema0.9", "ema0.99", "ema0.999"})
    if (most_accurate.empty() || best_acc[ema].second > best_acc[most_accurate].second) most_accurate = ema;
  CHECK(reported["ema_acc"]["model"] == most_accurate);
  CHECK(reported["ema_acc"]["bn"] == "running");
  CHECK(reported["ema_acc"]["test"] == models[most_accurate]["best_acc"]["test"]);
  // EMA (acc.)(BN) and (loss)(BN): the slowest decay, recomputed after training.
  for (const auto& item : {std::pair{"ema_acc_bn", "best_acc"}, std::pair{"ema_loss_bn", "best_loss"}}) {
    const char* row = item.first;
    const char* key = item.second;
    CAPTURE(row);
    CHECK(reported[row]["model"] == "ema0.999");
    CHECK(reported[row]["bn"] == "recomputed");
    CHECK(reported[row]["epoch"] == models["ema0.999"][key]["epoch"]);
    CHECK(reported[row]["test"] == models["ema0.999"][key]["recomputed"]["test"]);
  }
}
