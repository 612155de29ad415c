// The eval and probe apps end to end, on a tiny run of the train app: eval reproduces
// the train app's numbers exactly, reads the averages of a training checkpoint, reports
// churn/JS for several models and rejects checkpoints that do not fit; probe trains a
// new head on a frozen backbone and writes it. Bad flags get one line and exit code 2.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#if __has_include(<stb/stb_image_write.h>)
#include <stb/stb_image_write.h>
#else
#include <stb_image_write.h>
#endif

#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "models/registry.h"
#include "support/gradcheck.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Result {
  int exit_code;
  std::string output;
};

Result run(const std::string& binary, const std::string& args) {
  const fs::path log = fs::temp_directory_path() / "polyak_eval_probe_test.log";
  const std::string command = binary + " " + args + " > " + log.string() + " 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text.str()};
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("polyak_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// One tiny training run shared by the tests (trained on first use): tiny_cnn, one
// epoch on 512 images, one EMA, a 10% validation split, 300 test images.
const std::string kRunFlags = "--train-subset 512 --test-subset 300 --val-split 0.1";

fs::path tiny_run() {
  static const fs::path dir = [] {
    const std::string data = polyak::testing::real_data_path("cifar10");
    if (data.empty()) return fs::path();
    const fs::path out = fresh_dir("evalprobe_run");
    const Result r = run(POLYAK_TRAIN_BIN, "--model tiny_cnn --epochs 1 --ema-decays 0.9 " + kRunFlags + " --data " + data +
                                               " --output " + out.string());
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    return out;
  }();
  return dir;
}

// The train app's test row for `model` ("sgd", "ema0.9") of the last epoch.
json test_row(const fs::path& run_dir, const std::string& model) {
  std::ifstream in(run_dir / "metrics.jsonl");
  std::string line;
  json found;
  while (std::getline(in, line)) {
    const json row = json::parse(line);
    if (row["split"] == "test" && row["model"] == model && row["bn"] == "running" && !row.contains("phase")) found = row;
  }
  REQUIRE_MESSAGE(!found.is_null(), "no test row for " << model);
  return found;
}

void write_png(const fs::path& path, const uint8_t rgb[3], polyak::Rng& rng) {
  std::vector<uint8_t> px(32 * 32 * 3);
  for (size_t i = 0; i < px.size(); ++i)
    px[i] = static_cast<uint8_t>(std::clamp<int>(rgb[i % 3] + static_cast<int>(rng.below(41)) - 20, 0, 255));
  REQUIRE(stbi_write_png(path.c_str(), 32, 32, 3, px.data(), 32 * 3) != 0);
}

// An image folder of three colour classes (red, green, blue with noise): 12 training
// and 6 test images each.
fs::path colour_folder() {
  static const fs::path root = [] {
    const fs::path dir = fresh_dir("evalprobe_folder");
    polyak::Rng rng(5);
    const std::vector<std::pair<std::string, std::array<uint8_t, 3>>> classes = {
        {"blue", {30, 40, 200}}, {"green", {40, 190, 50}}, {"red", {210, 40, 30}}};
    for (const auto& [name, colour] : classes)
      for (const auto& [part, count] : {std::pair{"train", 12}, std::pair{"test", 6}}) {
        fs::create_directories(dir / part / name);
        for (int i = 0; i < count; ++i) write_png(dir / part / name / (std::to_string(i) + ".png"), colour.data(), rng);
      }
    return dir;
  }();
  return root;
}

}  // namespace

TEST_CASE("models: a zoo model is a backbone and a linear head, forward = head(features)") {
  // The small models only: building the large ones (WRN-28-10, ResNet-34) takes seconds.
  polyak::Rng rng(1);
  for (const std::string name : {"tiny_cnn", "resnet20", "vgg16"}) {
    CAPTURE(name);
    const auto model = polyak::models::create_model(name, 7, rng);
    auto& classifier = polyak::models::as_classifier(*model);
    CHECK(classifier.head().weight.size(0) == 7);
    model->eval();
    polyak::NoGradGuard no_grad;
    const polyak::Tensor x = polyak::Tensor::normal({1, 3, 32, 32}, 0, 1, rng);
    const polyak::Tensor f = classifier.features(x);
    REQUIRE(f.dim() == 2);
    CHECK(f.size(1) == classifier.head().weight.size(1));
    const std::vector<float> a = (*model)(x).to_vector<float>(), b = classifier.head()(f).to_vector<float>();
    CHECK(a == b);
  }
}

TEST_CASE("eval: reproduces the train app's test metrics exactly, with temperature scaling and churn") {
  const fs::path dir = tiny_run();
  if (dir.empty()) return;
  const std::string data = polyak::testing::real_data_path("cifar10");
  const fs::path out = dir / "eval.json";
  const Result r = run(POLYAK_EVAL_BIN, (dir / "model.safetensors").string() + " " + (dir / "last.safetensors").string() + " " +
                                            kRunFlags + " --data " + data + " --json " + out.string());
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("churn") != std::string::npos);
  const json doc = read_json(out);
  const json expected = test_row(dir, "sgd");
  REQUIRE(doc["models"].size() == 2);
  for (const json& m : doc["models"]) {
    CHECK(m["architecture"] == "tiny_cnn");
    CHECK(m["model"] == "sgd");
    CHECK(m["images"] == 300);
    CHECK(m["accuracy"].get<double>() == expected["accuracy"].get<double>());
    CHECK(m["loss"].get<double>() == expected["loss"].get<double>());
    CHECK(m["ece"].get<double>() == expected["ece"].get<double>());
    CHECK(m["ece15"].get<double>() == expected["ece15"].get<double>());
    // Temperature fitted on the run's validation split: never worse in NLL there, and
    // the accuracy is unchanged.
    REQUIRE(m.contains("temperature_scaled"));
    CHECK(m["temperature_scaled"]["temperature"].get<double>() > 0);
    CHECK(m["temperature_scaled"]["accuracy"] == m["accuracy"]);
  }
  CHECK(doc["temperature_scaling"]["images"] == 51);  // round(0.1 * 512)
  // The same weights twice: no churn, no divergence.
  REQUIRE(doc["pairs"].size() == 1);
  CHECK(doc["pairs"][0]["churn"].get<double>() == 0.0);
  CHECK(doc["pairs"][0]["js"].get<double>() == doctest::Approx(0.0).epsilon(1e-12));
}

TEST_CASE("eval: an average from a training checkpoint, against the live weights") {
  const fs::path dir = tiny_run();
  if (dir.empty()) return;
  const std::string data = polyak::testing::real_data_path("cifar10");
  const Result r = run(POLYAK_EVAL_BIN, (dir / "last.safetensors").string() +
                                            " --ema sgd,ema0.9 --test-subset 300 --json - --data " + data);
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  // stdout is the JSON (the table went to stderr, before it in the captured log).
  const json doc = json::parse(r.output.substr(r.output.find("\n{") + 1));
  REQUIRE(doc["models"].size() == 2);
  CHECK(doc["models"][1]["model"] == "ema0.9");
  CHECK(doc["models"][0]["accuracy"].get<double>() == test_row(dir, "sgd")["accuracy"].get<double>());
  CHECK(doc["models"][1]["accuracy"].get<double>() == test_row(dir, "ema0.9")["accuracy"].get<double>());
  CHECK(doc["models"][1]["loss"].get<double>() == test_row(dir, "ema0.9")["loss"].get<double>());
  CHECK(doc["temperature_scaling"]["skipped"] == "no --val-split");
  REQUIRE(doc["pairs"].size() == 1);
  CHECK(doc["pairs"][0]["js"].get<double>() > 0);

  // The averages of a model-only checkpoint: none.
  const Result none = run(POLYAK_EVAL_BIN, (dir / "model.safetensors").string() + " --ema ema0.9 --test-subset 10 --data " + data);
  CHECK(none.exit_code == 2);
  CHECK_MESSAGE(none.output.find("--ema ema0.9: " + (dir / "model.safetensors").string() + " holds no averages") !=
                    std::string::npos,
                none.output);
}

TEST_CASE("eval: checkpoints that do not fit are named, exit code 2") {
  const fs::path dir = tiny_run();
  if (dir.empty()) return;
  const std::string data = polyak::testing::real_data_path("cifar10");
  const std::string model = (dir / "model.safetensors").string();

  const Result flag = run(POLYAK_EVAL_BIN, model + " --model resnet20 --test-subset 10 --data " + data);
  CHECK(flag.exit_code == 2);
  CHECK_MESSAGE(flag.output.find("--model resnet20: " + model + " holds a tiny_cnn") != std::string::npos, flag.output);

  // A resnet20 without metadata, read as a tiny_cnn.
  polyak::Rng rng(0);
  const auto resnet = polyak::models::create_model("resnet20", 10, rng);
  const fs::path foreign = dir / "foreign_resnet20.safetensors";
  polyak::io::save_safetensors(foreign.string(), resnet->state_dict());
  const Result other = run(POLYAK_EVAL_BIN, foreign.string() + " --model tiny_cnn --test-subset 10 --data " + data);
  CHECK(other.exit_code == 2);
  CHECK_MESSAGE(other.output.find(foreign.string() + ": does not fit a tiny_cnn") != std::string::npos, other.output);
  const Result unnamed = run(POLYAK_EVAL_BIN, foreign.string() + " --test-subset 10 --data " + data);
  CHECK(unnamed.exit_code == 2);
  CHECK_MESSAGE(unnamed.output.find("does not name its architecture; pass --model") != std::string::npos, unnamed.output);

  // A CIFAR-10 model on a 3-class dataset.
  const Result classes = run(POLYAK_EVAL_BIN, model + " --dataset folder --data " + colour_folder().string());
  CHECK(classes.exit_code == 2);
  CHECK_MESSAGE(classes.output.find(model + ": a tiny_cnn for 10 classes, but the dataset has 3") != std::string::npos,
                classes.output);
}

TEST_CASE("probe: a new head on the frozen backbone, CIFAR-10 and an image folder") {
  const fs::path dir = tiny_run();
  if (dir.empty()) return;
  const std::string data = polyak::testing::real_data_path("cifar10");
  const fs::path head = dir / "probe_head.safetensors", out = dir / "probe.json";
  const Result r = run(POLYAK_PROBE_BIN, (dir / "last.safetensors").string() +
                                             " --epochs 2 --train-subset 2000 --test-subset 500 --data " + data +
                                             " --output " + head.string() + " --json " + out.string());
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const json doc = read_json(out);
  CHECK(doc["features"] == 64);
  CHECK(doc["epochs"].size() == 2);
  CHECK(doc["settings"]["lr"].get<double>() == doctest::Approx(0.01));
  CHECK(doc["settings"]["nesterov"] == true);
  CHECK(doc["settings"]["weight_decay"].get<double>() == 0.0);
  // Above chance (10%), and better than a uniform guess in loss.
  CHECK(doc["test_accuracy"].get<double>() > 10.0);
  CHECK(doc["test_loss"].get<double>() < std::log(10.0));
  const auto file = polyak::io::load_safetensors(head.string());
  REQUIRE(file.contains("fc.weight"));
  CHECK(file.at("fc.weight").shape() == polyak::Shape{10, 64});
  CHECK(file.at("fc.bias").shape() == polyak::Shape{10});
  CHECK(file.metadata.at("polyak.probe.architecture") == "tiny_cnn");

  // Transfer to another label set: 3 colour classes. The probed model (backbone + new
  // head) evaluates to the probe's own test accuracy.
  const fs::path folder = colour_folder(), model = dir / "probe_model.safetensors", out2 = dir / "probe_folder.json";
  const Result f = run(POLYAK_PROBE_BIN, (dir / "last.safetensors").string() + " --ema ema0.9 --dataset folder --data " +
                                             folder.string() + " --epochs 30 --batch-size 8 --lr 0.05 --output-model " +
                                             model.string() + " --json " + out2.string());
  REQUIRE_MESSAGE(f.exit_code == 0, f.output);
  const json folder_doc = read_json(out2);
  CHECK(folder_doc["classes"] == 3);
  CHECK(folder_doc["model"] == "ema0.9");
  CHECK(folder_doc["test_accuracy"].get<double>() >= 60.0);
  const Result e = run(POLYAK_EVAL_BIN, model.string() + " --dataset folder --data " + folder.string() + " --json " +
                                            (dir / "probe_eval.json").string());
  REQUIRE_MESSAGE(e.exit_code == 0, e.output);
  CHECK(read_json(dir / "probe_eval.json")["models"][0]["accuracy"].get<double>() ==
        folder_doc["test_accuracy"].get<double>());
}

TEST_CASE("eval and probe: bad flags and inputs get one clear line and exit code 2") {
  const fs::path dir = tiny_run();
  if (dir.empty()) return;
  const std::string model = (dir / "model.safetensors").string();
  const std::vector<std::tuple<const char*, std::string, std::string>> cases = {
      {POLYAK_EVAL_BIN, model + " --split val", "--split val: expected a --val-split > 0"},
      {POLYAK_EVAL_BIN, model + " --bn-recompute maybe", "--bn-recompute maybe: expected on or off"},
      {POLYAK_EVAL_BIN, model + " --ema swa", "--ema swa: expected sgd, all or average names"},
      {POLYAK_EVAL_BIN, model + " --val-split 1.5", "--val-split 1.5: expected a fraction in [0, 1)"},
      {POLYAK_EVAL_BIN, model + " --model resnet19", "--model resnet19: expected one of"},
      {POLYAK_EVAL_BIN, "/nonexistent/x.safetensors", "checkpoint /nonexistent/x.safetensors: no such file"},
      {POLYAK_EVAL_BIN, model + " --bogus 3", "bogus"},
      {POLYAK_EVAL_BIN, "", "checkpoints is required"},
      {POLYAK_PROBE_BIN, model + " --epochs 0", "--epochs 0: expected an integer from 1 to 100000"},
      {POLYAK_PROBE_BIN, model + " --sched step", "--sched step: expected constant or cosine"},
      {POLYAK_PROBE_BIN, model + " --lr -1", "--lr -1: expected a positive number"},
      {POLYAK_PROBE_BIN, model + " --output /nonexistent/dir/h.safetensors", "--output /nonexistent/dir/h.safetensors"},
      {POLYAK_PROBE_BIN, "/nonexistent/x.safetensors", "checkpoint /nonexistent/x.safetensors: no such file"},
      {POLYAK_PROBE_BIN, model + " --bogus", "bogus"},
  };
  for (const auto& [binary, flags, message] : cases) {
    const std::string command = std::string(binary) + " " + flags;  // (clang 14 cannot capture a structured binding)
    CAPTURE(command);
    const Result r = run(binary, flags);
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(r.output.find(message) != std::string::npos, r.output);
  }
  // Not a checkpoint at all.
  const fs::path junk = dir / "junk.safetensors";
  std::ofstream(junk) << "not a safetensors file";
  const Result j = run(POLYAK_EVAL_BIN, junk.string() + " --test-subset 10 --data " + polyak::testing::real_data_path("cifar10"));
  CHECK(j.exit_code == 2);
  CHECK_MESSAGE(j.output.find(junk.string()) != std::string::npos, j.output);
}

// Noisy labels are for training only: the validation split is drawn on the clean labels
// and keeps them, so eval reproduces it from the seed alone (no --labels), and its
// validation numbers are the train app's to the last digit. Each evaluation records
// the memorisation of the wrongly labelled training images.
TEST_CASE("train on noisy labels: clean validation split that eval reproduces, memorisation per evaluation") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  const fs::path dir = fresh_dir("noisy_run");
  const std::string split = "--train-subset 512 --test-subset 100 --val-split 0.25 --seed 3";
  const Result r = run(POLYAK_TRAIN_BIN, "--model tiny_cnn --epochs 1 --ema-decays 0.9 --label-noise 0.5 " + split +
                                             " --data " + data + " --output " + (dir / "run").string());
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  json val_row, memorised_sgd, memorised_ema;
  std::ifstream in(dir / "run" / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const json row = json::parse(line);
    if (row.contains("phase")) continue;
    if (row["split"] == "val" && row["model"] == "sgd") val_row = row;
    if (row["split"] == "train_noisy") (row["model"] == "sgd" ? memorised_sgd : memorised_ema) = row;
  }
  REQUIRE(!val_row.is_null());
  const fs::path out = dir / "eval.json";
  const Result e = run(POLYAK_EVAL_BIN, (dir / "run" / "model.safetensors").string() + " --split val " + split +
                                            " --data " + data + " --json " + out.string());
  REQUIRE_MESSAGE(e.exit_code == 0, e.output);
  const json doc = read_json(out);
  const json& m = doc["models"][0];
  CHECK(m["images"] == 128);
  CHECK(m["accuracy"].get<double>() == val_row["accuracy"].get<double>());
  CHECK(m["loss"].get<double>() == val_row["loss"].get<double>());
  // Symmetric noise at 0.5 on the 384 training images: about 192 wrong labels.
  for (const json* row : {&memorised_sgd, &memorised_ema}) {
    REQUIRE(!row->is_null());
    CHECK((*row)["images"].get<int64_t>() > 150);
    CHECK((*row)["images"].get<int64_t>() < 234);
    CHECK((*row)["memorised"].get<double>() + (*row)["corrected"].get<double>() <= 100.0);
  }
}

// The paper probes the selected EMA: --selected takes a row of the run's selection.json
// (here EMA (acc.), the run's one average at its best validation epoch); the result is
// that of probing the row's file directly. --bn-recompute on first recomputes the
// backbone's BN statistics on the probe's training images, which changes the features.
TEST_CASE("probe: a run's selected model, with BN statistics recomputed on the target as an option") {
  const fs::path dir = tiny_run();
  if (dir.empty()) return;
  const std::string data = polyak::testing::real_data_path("cifar10");
  const std::string flags = " --epochs 1 --train-subset 500 --test-subset 200 --data " + data;
  const auto probe = [&](const std::string& args, const std::string& name) {
    const fs::path out = dir / name;
    const Result r = run(POLYAK_PROBE_BIN, args + flags + " --json " + out.string());
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
    return read_json(out);
  };
  const json selected = probe(dir.string() + " --selected ema_acc", "probe_selected.json");
  CHECK(selected["checkpoint"] == (dir / "best_acc_ema0.9.safetensors").string());
  const json direct = probe((dir / "best_acc_ema0.9.safetensors").string(), "probe_direct.json");
  CHECK(selected["test_loss"].get<double>() == direct["test_loss"].get<double>());
  const json recomputed = probe(dir.string() + " --selected ema_acc --bn-recompute on", "probe_recomputed.json");
  CHECK(recomputed["bn_recompute"] == "on");
  CHECK(recomputed["test_loss"].get<double>() != direct["test_loss"].get<double>());

  const Result bad = run(POLYAK_PROBE_BIN, dir.string() + " --selected ema_acc_bn" + flags);
  CHECK(bad.exit_code == 2);
  CHECK(bad.output.find("has no such row") != std::string::npos);
}

// train --seeds: one run per seed, then the aggregate. Its numbers are those the eval
// app computes on the same checkpoints: each seed's final SGD accuracy, and the churn
// and JS divergence between the seeds' final models. The same command again only
// aggregates; the report of the root shows the seeds' aggregate.
TEST_CASE("train --seeds: runs per seed and their aggregate, which eval's numbers confirm") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  const fs::path root = fresh_dir("seeds_run");
  const std::string command = "--seeds 4,9 --model tiny_cnn --epochs 1 --ema-decays 0.9 --bn-recompute end "
                              "--bn-recompute-batches 2 --train-subset 512 --test-subset 200 --val-split 0.25 --data " +
                              data + " --output " + root.string();
  const Result first = run(POLYAK_TRAIN_BIN, command);
  REQUIRE_MESSAGE(first.exit_code == 0, first.output);
  const json aggregate = read_json(root / "aggregate.json");
  CHECK(aggregate["runs"] == json::array({"seed4", "seed9"}));
  const json& rows = aggregate["rows"];
  for (const char* row : {"sgd_final", "sgd_best", "ema_acc", "ema_loss", "ema_acc_bn", "ema_loss_bn"})
    CHECK_MESSAGE(rows.contains(row), row);
  for (const char* seed : {"seed4", "seed9"}) {
    const size_t i = seed == std::string("seed4") ? 0 : 1;
    CHECK(rows["sgd_final"]["seeds"][i]["accuracy"].get<double>() == test_row(root / seed, "sgd")["accuracy"].get<double>());
  }
  const fs::path out = root / "eval.json";
  const Result e = run(POLYAK_EVAL_BIN, (root / "seed4" / "model.safetensors").string() + " " +
                                            (root / "seed9" / "model.safetensors").string() +
                                            " --test-subset 200 --data " + data + " --json " + out.string());
  REQUIRE_MESSAGE(e.exit_code == 0, e.output);
  const json pair = read_json(out)["pairs"][0];
  CHECK(rows["sgd_final"]["churn"]["mean"].get<double>() == pair["churn"].get<double>());
  CHECK(rows["sgd_final"]["js_nats"]["mean"].get<double>() == doctest::Approx(pair["js"].get<double>()).epsilon(1e-12));
  CHECK(rows["sgd_final"]["js_bits"]["mean"].get<double>() ==
        doctest::Approx(pair["js"].get<double>() / std::log(2.0)).epsilon(1e-12));

  const Result again = run(POLYAK_TRAIN_BIN, command);
  REQUIRE_MESSAGE(again.exit_code == 0, again.output);
  CHECK(again.output.find("seed 4: complete") != std::string::npos);
  CHECK(again.output.find("epoch 1/") == std::string::npos);
  const std::string html = polyak::testing::read_file(root / "report.html");
  CHECK(html.find("Over the seeds") != std::string::npos);
}
