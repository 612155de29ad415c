// --resume on a hand-edited or damaged checkpoint: the run configuration is read
// strictly (TrainConfig::from_json), and restore_run checks the counters, the averages
// and the model selection against the run it continues. Each damage must be refused
// with std::invalid_argument naming it; the undamaged checkpoint must restore.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <map>
#include <string>

#include "apps/train/resume.h"
#include "models/registry.h"
#include "support/temp_dir.h"

using namespace polyak;
using namespace polyak::app;

TEST_CASE("TrainConfig::from_json: a configuration written by the app reads back; an edited one is read exactly or refused") {
  TrainConfig written;
  written.epochs = 7;
  written.seed = 18446744073709551615ull;
  written.milestones = {2, 5};
  written.lr = 0.05f;
  CHECK(TrainConfig::from_json(written.to_json()).to_json() == written.to_json());
  // A setting it lacks keeps its default (a checkpoint of an older version).
  CHECK(TrainConfig::from_json(R"({"epochs": 3})").epochs == 3);
  CHECK(TrainConfig::from_json(R"({"lr": 0.1})").lr == 0.1f);  // a decimal as typed, read as the float
  const std::map<std::string, std::string> refused = {
      {R"({"epoch": 3})", "unknown setting 'epoch'"},
      {R"({"epochs": 10.7})", "epochs is 10.7, expected a value like 10"},
      {R"({"epochs": "10"})", "epochs is \"10\""},
      {R"({"epochs": 4294967297})", "epochs 4294967297 is out of range"},
      {R"({"seed": -1})", "seed -1 is out of range"},
      {R"({"lr": 1e39})", "lr is 1e+39"},
      {R"({"nesterov": 1})", "nesterov is 1"},
      {R"({"milestones": [1, 2.5]})", "milestones is [1,2.5]"},
      {R"([1, 2])", "not a JSON object"},
      {R"({"epochs": )", "not a JSON object"},
  };
  for (const auto& entry : refused) {
    const std::string& text = entry.first;
    const std::string& reason = entry.second;
    CAPTURE(text);
    CHECK_THROWS_WITH_AS(TrainConfig::from_json(text), doctest::Contains(reason.c_str()), std::invalid_argument);
  }
}

namespace {

// A tiny_cnn run of 3 epochs of 4 batches of 8, one average, stopped after 6 steps
// (inside epoch 2) with a selection for epoch 1: the checkpoint the train app writes.
struct SmallRun {
  TrainConfig config;
  std::shared_ptr<nn::Module> model;
  std::unique_ptr<Sgd> sgd;
  std::unique_ptr<ema::EmaSet> averages;
  static constexpr int64_t kStepsPerEpoch = 4;

  SmallRun() {
    config.model = "tiny_cnn";
    config.epochs = 3;
    config.batch_size = 8;
    config.seed = 5;
    config.ema_decays = "0.9";
    config.ema_every = 2;
    config.resolve();
    Rng rng(config.seed);
    model = models::create_model("tiny_cnn", 10, rng);
    model->pack_arenas();
    sgd = std::make_unique<Sgd>(*model, SgdOptions{.lr = 0.1f, .momentum = 0.9f, .nesterov = true});
    averages = std::make_unique<ema::EmaSet>(*model, *config.ema_options(config.epochs * kStepsPerEpoch));
    for (int64_t step = 1; step <= 6; ++step) averages->after_step(step);  // 3 updates, T = 2
  }

  TrainingState state() const {
    TrainingState s;
    s.epoch = 1;
    s.step = 6;
    s.rng = {config.seed, 40};
    s.loader = {1, 2};
    s.epoch_loss_sum = 30.5;
    s.epoch_correct = 5;
    s.epoch_seen = 16;
    s.config_json = config.definition().to_json();
    return s;
  }

  // Writes the checkpoint with `edit` applied to its metadata, and restores it into a
  // fresh run.
  void resume_edited(const std::function<void(std::map<std::string, std::string>&)>& edit) const {
    testing::TempDir dir("polyak_resume");
    const std::string path = (dir.path / "last.safetensors").string();
    std::map<std::string, std::string> metadata = averages->state_metadata();
    nlohmann::json selection = {{"ema0.9", {{"best_acc", {{"epoch", 1}, {"bn", "running"}, {"file", "best_acc_ema0.9.safetensors"},
                                                           {"val", {{"accuracy", 40.0}, {"loss", 1.5}}}}}}}};
    metadata["polyak.selection"] = selection.dump();
    save_training_checkpoint(path, *model, *sgd, state(), averages->state_tensors(), metadata);
    io::SafetensorsFile file = io::load_safetensors(path);
    edit(file.metadata);
    SmallRun fresh;
    restore_run(file, fresh.config, kStepsPerEpoch, *fresh.model, *fresh.sgd, fresh.averages.get());
  }
};

}  // namespace

TEST_CASE("restore_run: a checkpoint restores as written; damaged counters, averages or selection are refused") {
  const SmallRun run;
  run.resume_edited([](auto&) {});
  const std::map<std::string, std::function<void(std::map<std::string, std::string>&)>> damage = {
      {"step 7 at epoch 1, batch 2 of 4", [](auto& m) { m["polyak.step"] = "7"; }},
      {"the loader at epoch 1, batch 9", [](auto& m) { m["polyak.loader_next_batch"] = "9"; }},
      {"epoch 4 of a run of 3 epochs", [](auto& m) { m["polyak.epoch"] = "4"; }},
      {"the RNG's seed 6 is not the run's --seed 5", [](auto& m) { m["polyak.rng_seed"] = "6"; }},
      {"'polyak.rng_seed' is not an unsigned integer: '-5'", [](auto& m) { m["polyak.rng_seed"] = "-5"; }},
      {"17 correct of 16 images", [](auto& m) { m["polyak.epoch_correct"] = "17"; }},
      {"16 correct of 99 images seen in 2 batches", [](auto& m) { m["polyak.epoch_correct"] = "16", m["polyak.epoch_seen"] = "99"; }},
      {"polyak.ema.updates is 'x'", [](auto& m) { m["polyak.ema.updates"] = "x"; }},
      {"4 updates of the averages in 6 steps", [](auto& m) { m["polyak.ema.updates"] = "4"; }},
      {"no polyak.ema.updates", [](auto& m) { m.erase("polyak.ema.updates"); }},
      {"its model selection is not JSON", [](auto& m) { m["polyak.selection"] = "{"; }},
      {"'ema0.5' is not a model of the run", [](auto& m) { m["polyak.selection"] = R"({"ema0.5": {}})"; }},
      {"'ema0.9.best_acc.file' is not best_acc_ema0.9.safetensors",
       [](auto& m) {
         m["polyak.selection"] =
             R"({"ema0.9": {"best_acc": {"epoch": 1, "bn": "running", "file": "../x", "val": {"accuracy": 1, "loss": 1}}}})";
       }},
      {"'sgd.best_loss' has no epoch from 1 to 1",
       [](auto& m) {
         m["polyak.selection"] = R"({"sgd": {"best_loss": {"epoch": 2, "bn": "running", "file": "best_loss_sgd.safetensors",
                                                        "val": {"accuracy": 1, "loss": 1}}}})";
       }},
  };
  for (const auto& entry : damage) {
    const std::string& reason = entry.first;
    const auto& edit = entry.second;
    CAPTURE(reason);
    CHECK_THROWS_WITH_AS(run.resume_edited(edit), doctest::Contains(reason.c_str()), std::invalid_argument);
  }
}
