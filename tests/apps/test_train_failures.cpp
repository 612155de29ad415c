// The train app when things go wrong during a run: a write that fails half-way (a full
// disk, simulated with RLIMIT_FSIZE), and a loss or gradient that stops being finite
// (--on-nonfinite stop and skip). The checkpoint on disk must survive both intact.
#include <doctest/doctest.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "apps/child_process.h"
#include "engine/io/atomic_file.h"
#include "engine/io/safetensors.h"
#include "engine/rng.h"
#include "models/registry.h"
#include "support/gradcheck.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;
using polyak::testing::read_file;
using polyak::testing::ChildResult;
using polyak::testing::run_child;

namespace {

bool has_temp_files(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir))
    if (polyak::io::is_temp_file_name(entry.path().filename().string())) return true;
  return false;
}

void check_all_finite(const fs::path& checkpoint) {
  for (const auto& [name, t] : polyak::io::load_safetensors(checkpoint.string()).tensors) {
    if (t.dtype() != polyak::DType::F32) continue;
    const std::string& tensor = name;  // (clang 14 cannot capture a structured binding)
    CAPTURE(tensor);
    for (float v : t.to_vector<float>()) REQUIRE(std::isfinite(v));
  }
}

std::vector<std::string> with(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

// tiny_cnn on 128 training images (4 steps per epoch of 32) and 100 test images.
std::vector<std::string> tiny_run(const std::string& data) {
  return {"--model", "tiny_cnn", "--train-subset", "128", "--test-subset", "100", "--batch-size", "32",
          "--threads", "2", "--data", data};
}

// A model-only tiny_cnn checkpoint whose classifier bias holds a NaN: every loss is NaN.
std::string nan_init(const fs::path& dir) {
  polyak::Rng rng(0);
  const auto model = polyak::models::create_model("tiny_cnn", 10, rng);
  auto state = model->state_dict();
  for (auto& [name, t] : state)
    if (name == "fc.bias") polyak::Tensor(t).copy_(polyak::Tensor::full({10}, std::numeric_limits<float>::quiet_NaN()));
  const fs::path path = dir / "nan_init.safetensors";
  polyak::io::save_safetensors(path.string(), state, {{"polyak.model", "tiny_cnn"}});
  return path.string();
}

}  // namespace

TEST_CASE("train app: a checkpoint write that fails half-way names the file and the reason and keeps the last one") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  polyak::testing::TempDir tmp("polyak_full_disk");
  const fs::path out = tmp.path / "run", last = out / "last.safetensors";
  const ChildResult first =
      run_child(POLYAK_TRAIN_BIN, with(tiny_run(data), {"--epochs", "2", "--save-every", "2", "--max-steps", "3",
                                                        "--ema-decays", "0.9,0.99", "--output", out.string()}));
  REQUIRE_MESSAGE(first.exit_code == 0, first.output);
  const std::string before = read_file(last);

  // The resumed run saves at step 4; its files may grow to half the checkpoint's size.
  const ChildResult full =
      run_child(POLYAK_TRAIN_BIN, {"--resume", last.string()}, {}, static_cast<rlim_t>(before.size() / 2));
  CHECK(full.exit_code == 1);
  CHECK_MESSAGE(full.output.find(last.string()) != std::string::npos, full.output);
  CHECK_MESSAGE(full.output.find(std::strerror(EFBIG)) != std::string::npos, full.output);
  CHECK(read_file(last) == before);
  CHECK(!has_temp_files(out));

  // With room again the run goes on from the intact checkpoint.
  const ChildResult again = run_child(POLYAK_TRAIN_BIN, {"--resume", last.string(), "--max-steps", "5"});
  CHECK_MESSAGE(again.exit_code == 0, again.output);
  CHECK(again.output.find("resumed " + last.string() + " at epoch 0, step 3") != std::string::npos);
}

TEST_CASE("train app: --on-nonfinite stop ends the run with exit code 3 and never saves what diverged") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  polyak::testing::TempDir tmp("polyak_diverge");
  const fs::path out = tmp.path / "run", last = out / "last.safetensors";

  SUBCASE("a learning rate far too large, a checkpoint every step") {
    const ChildResult r = run_child(POLYAK_TRAIN_BIN, with(tiny_run(data), {"--epochs", "2", "--lr", "1e30", "--save-every",
                                                                            "1", "--output", out.string()}));
    CHECK(r.exit_code == 3);
    CHECK_MESSAGE(r.output.find("train: training diverged at step ") != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find(" (epoch 1, lr ") != std::string::npos, r.output);  // the step's cosine lr
    CHECK_MESSAGE(r.output.find("the last good checkpoint is " + last.string() + " (step ") != std::string::npos, r.output);
    REQUIRE(fs::exists(last));
    check_all_finite(last);
    CHECK(!fs::exists(out / "model.safetensors"));
  }
  SUBCASE("weights that make the first loss NaN: named, with no checkpoint written") {
    const ChildResult r = run_child(POLYAK_TRAIN_BIN, with(tiny_run(data), {"--epochs", "1", "--init", nan_init(tmp.path),
                                                                            "--output", out.string()}));
    CHECK(r.exit_code == 3);
    CHECK_MESSAGE(r.output.find("train: training diverged at step 1 (epoch 1, lr ") != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find("): the loss is ") != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find("nan; stopped without saving; the last good checkpoint is none") != std::string::npos,
                  r.output);
    CHECK(!fs::exists(last));
  }
}

TEST_CASE("train app: --on-nonfinite skip leaves the model untouched at skipped steps and stops after --max-skips") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  polyak::testing::TempDir tmp("polyak_skip");
  const fs::path out = tmp.path / "run";
  const std::string init = nan_init(tmp.path);

  SUBCASE("more skips in a row than allowed: the stop message") {
    const ChildResult r = run_child(POLYAK_TRAIN_BIN, with(tiny_run(data), {"--epochs", "2", "--init", init, "--on-nonfinite",
                                                                            "skip", "--max-skips", "3", "--output",
                                                                            out.string()}));
    CHECK(r.exit_code == 3);
    for (const char* step : {"warning: step 1 (epoch 1, lr ", "warning: step 2 ", "warning: step 3 "})
      CHECK_MESSAGE(r.output.find(step) != std::string::npos, r.output);
    CHECK(r.output.find("warning: step 4 ") == std::string::npos);
    CHECK_MESSAGE(r.output.find("training diverged at step 4 (epoch 1, lr ") != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find("the loss is ") != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find("nan, 3 steps in a row (--max-skips)") != std::string::npos, r.output);
  }
  SUBCASE("an epoch of skipped steps: counted in metrics.jsonl, weights and BN statistics as before") {
    const ChildResult r = run_child(POLYAK_TRAIN_BIN, with(tiny_run(data), {"--epochs", "1", "--init", init, "--on-nonfinite",
                                                                            "skip", "--ema-decays", "none", "--output",
                                                                            out.string()}));
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    std::ifstream rows(out / "metrics.jsonl");
    std::string line;
    REQUIRE(std::getline(rows, line));
    const nlohmann::json row = nlohmann::json::parse(line);
    CHECK(row["split"] == "train");
    CHECK(row["skipped"] == 4);
    CHECK(row["images"] == 0);
    const auto init_file = polyak::io::load_safetensors(init);
    const auto final_file = polyak::io::load_safetensors((out / "model.safetensors").string());
    REQUIRE(init_file.tensors.size() == final_file.tensors.size());
    for (size_t i = 0; i < init_file.tensors.size(); ++i) {
      CAPTURE(init_file.tensors[i].first);
      const polyak::Tensor& a = init_file.tensors[i].second;
      const polyak::Tensor& b = final_file.tensors[i].second;
      CHECK(std::memcmp(a.raw_data(), b.raw_data(), static_cast<size_t>(a.numel()) * polyak::dtype_size(a.dtype())) == 0);
    }
  }
}
