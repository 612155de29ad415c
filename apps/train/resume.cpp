#include "apps/train/resume.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <vector>

#include "apps/common/cli.h"

namespace polyak::app {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

[[noreturn]] void bad_checkpoint(const std::string& path, const std::string& what) {
  throw std::invalid_argument("--resume " + path + ": " + what);
}

// The counters of a checkpoint written by a run of `config` with `steps_per_epoch`
// batches an epoch. Every step takes one batch (a skipped step too), so the step
// counter is where the loader stands; the epoch's sums count at most its batches.
void check_counters(const std::string& path, const TrainingState& s, const TrainConfig& config,
                    int64_t steps_per_epoch) {
  const auto require = [&](bool ok, const std::string& what) {
    if (!ok) bad_checkpoint(path, "inconsistent counters in its metadata: " + what);
  };
  require(s.epoch >= 0 && s.epoch <= config.epochs,
          "epoch " + std::to_string(s.epoch) + " of a run of " + std::to_string(config.epochs) + " epochs");
  require(s.loader.epoch == s.epoch && s.loader.next_batch >= 0 && s.loader.next_batch < steps_per_epoch,
          "the loader at epoch " + std::to_string(s.loader.epoch) + ", batch " + std::to_string(s.loader.next_batch) +
              " after " + std::to_string(s.epoch) + " epochs of " + std::to_string(steps_per_epoch) + " batches");
  require(s.step == s.epoch * steps_per_epoch + s.loader.next_batch,
          "step " + std::to_string(s.step) + " at epoch " + std::to_string(s.epoch) + ", batch " +
              std::to_string(s.loader.next_batch) + " of " + std::to_string(steps_per_epoch));
  require(s.rng.seed == config.seed, "the RNG's seed " + std::to_string(s.rng.seed) + " is not the run's --seed " +
                                         std::to_string(config.seed));
  const int64_t batches = s.loader.next_batch;
  require(s.epoch_skipped >= 0 && s.epoch_skipped <= batches && s.consecutive_skips >= 0 &&
              s.consecutive_skips <= s.step,
          "skipped steps " + std::to_string(s.epoch_skipped) + " this epoch, " + std::to_string(s.consecutive_skips) +
              " in a row");
  require(s.epoch_seen >= 0 && s.epoch_seen <= (batches - s.epoch_skipped) * config.batch_size &&
              s.epoch_correct >= 0 && s.epoch_correct <= s.epoch_seen,
          std::to_string(s.epoch_correct) + " correct of " + std::to_string(s.epoch_seen) + " images seen in " +
              std::to_string(batches) + " batches");
  require(std::isfinite(s.epoch_loss_sum) && s.epoch_loss_sum >= 0, "the epoch's loss sum");
}

// The selection so far: for each model of the run, the kept weights of best validation
// accuracy and of lowest validation loss, as Protocol writes them. Anything else (a
// file name that points elsewhere, an epoch not yet trained) would surface hours later
// or silently change the result.
void check_selection(const std::string& path, const json& selection, const std::vector<std::string>& models,
                     int64_t epochs_done) {
  const auto require = [&](bool ok, const std::string& what) {
    if (!ok) bad_checkpoint(path, "bad model selection in its metadata: " + what);
  };
  require(selection.is_object(), "not a JSON object");
  for (const auto& [model, entry] : selection.items()) {
    require(std::find(models.begin(), models.end(), model) != models.end(), "'" + model + "' is not a model of the run");
    require(entry.is_object(), "'" + model + "' is not an object");
    for (const auto& [key, kept] : entry.items()) {
      const std::string where = model + "." + key;
      require(key == "best_acc" || key == "best_loss", "'" + where + "' is not best_acc or best_loss");
      require(kept.is_object() && kept.contains("epoch") && kept["epoch"].is_number_integer() &&
                  kept["epoch"].get<int64_t>() >= 1 && kept["epoch"].get<int64_t>() <= epochs_done,
              "'" + where + "' has no epoch from 1 to " + std::to_string(epochs_done));
      require(kept.contains("bn") && (kept["bn"] == "running" || kept["bn"] == "recomputed"),
              "'" + where + ".bn' is not running or recomputed");
      require(kept.contains("file") && kept["file"] == key + "_" + model + ".safetensors",
              "'" + where + ".file' is not " + key + "_" + model + ".safetensors");
      for (const char* split : {"val", "test"}) {
        if (!kept.contains(split) && split == std::string("test")) continue;
        const json& metrics = kept.contains(split) ? kept[split] : json();
        require(metrics.is_object() && metrics.contains("accuracy") && metrics["accuracy"].is_number() &&
                    metrics.contains("loss") && metrics["loss"].is_number(),
                "'" + where + "." + split + "' has no accuracy and loss");
      }
    }
  }
}

}  // namespace

io::SafetensorsFile read_resumed_checkpoint(const std::string& path) {
  require_file("--resume", path);
  return io::load_safetensors(path);
}

TrainConfig resumed_config(const TrainConfig& given, const io::SafetensorsFile& file) {
  const auto it = file.metadata.find("polyak.config");
  if (it == file.metadata.end())
    throw std::invalid_argument("--resume " + given.resume + ": not a training checkpoint (no run configuration)");
  TrainConfig config;
  try {
    config = TrainConfig::from_json(it->second);
  } catch (const std::invalid_argument& e) {
    bad_checkpoint(given.resume, e.what());
  }
  config.resume = given.resume;
  if (given.threads) config.threads = given.threads;
  config.max_steps = given.max_steps;
  if (given.save_every) config.save_every = given.save_every;
  config.output = given.output.empty() ? fs::path(given.resume).parent_path().string() : given.output;
  if (config.output.empty()) config.output = ".";
  return config;
}

Resumed restore_run(const io::SafetensorsFile& file, const TrainConfig& config, int64_t steps_per_epoch,
                    nn::Module& model, Sgd& sgd, ema::EmaSet* averages) {
  Resumed resumed;
  resumed.state = load_training_checkpoint(file, model, sgd);
  check_counters(file.path, resumed.state, config, steps_per_epoch);
  std::vector<std::string> models = {"sgd"};
  if (averages) {
    std::vector<nn::NamedTensor> tensors(file.tensors.begin(), file.tensors.end());
    try {
      averages->load_state(tensors, file.metadata);
    } catch (const std::invalid_argument& e) {
      bad_checkpoint(file.path, e.what());
    }
    // One update every T steps at most (none for a skipped step).
    if (averages->updates() > resumed.state.step / averages->options().every)
      bad_checkpoint(file.path, std::to_string(averages->updates()) + " updates of the averages in " +
                                    std::to_string(resumed.state.step) + " steps, one every " +
                                    std::to_string(averages->options().every) + " at most");
    for (size_t k = 0; k < averages->size(); ++k) models.push_back(averages->name(k));
  }
  if (const auto it = file.metadata.find("polyak.ranks"); it != file.metadata.end()) {
    char* end = nullptr;
    const long ranks = std::strtol(it->second.c_str(), &end, 10);
    if (it->second.empty() || *end != '\0' || ranks < 1 || ranks > 1 << 20)
      bad_checkpoint(file.path, "polyak.ranks is '" + it->second + "', expected a number of ranks");
    resumed.ranks = static_cast<int>(ranks);
  }
  if (const auto it = file.metadata.find("polyak.selection"); it != file.metadata.end()) {
    resumed.selection = json::parse(it->second, nullptr, false);
    if (resumed.selection.is_discarded()) bad_checkpoint(file.path, "its model selection is not JSON");
    check_selection(file.path, resumed.selection, models, resumed.state.epoch);
  }
  return resumed;
}

}  // namespace polyak::app
