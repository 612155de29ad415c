#include "apps/common/checkpoint.h"

#include <nlohmann/json.hpp>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>

#include "engine/nn/layers.h"
#include "models/registry.h"

namespace polyak::app {

namespace {

std::vector<nn::NamedTensor> model_tensors(const nn::Module& model) { return model.state_dict(); }

// `fallback` serves keys that older checkpoints lack; without one a missing key is an error.
int64_t metadata_int(const io::SafetensorsFile& file, const std::string& key, std::optional<int64_t> fallback = {}) {
  const auto it = file.metadata.find(key);
  if (it == file.metadata.end() && fallback) return *fallback;
  if (it == file.metadata.end())
    throw std::invalid_argument(file.path + ": not a training checkpoint (no '" + key + "' in its metadata)");
  try {
    size_t used = 0;
    const long long value = std::stoll(it->second, &used);
    if (used != it->second.size()) throw std::invalid_argument("trailing characters");
    return value;
  } catch (const std::exception&) {
    throw std::invalid_argument(file.path + ": metadata '" + key + "' is not an integer: '" + it->second + "'");
  }
}

// The RNG's seed and position are unsigned 64-bit numbers (a --seed past 2^63 is valid).
uint64_t metadata_uint(const io::SafetensorsFile& file, const std::string& key) {
  const auto it = file.metadata.find(key);
  if (it == file.metadata.end())
    throw std::invalid_argument(file.path + ": not a training checkpoint (no '" + key + "' in its metadata)");
  const std::string& text = it->second;
  char* end = nullptr;
  errno = 0;
  const unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0])) || *end != '\0' || errno == ERANGE)
    throw std::invalid_argument(file.path + ": metadata '" + key + "' is not an unsigned integer: '" + text + "'");
  return value;
}

// Doubles travel as C99 hexadecimal floats: exact, and readable back with strtod.
std::string hex_double(double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", value);
  return buf;
}

double metadata_double(const io::SafetensorsFile& file, const std::string& key) {
  const auto it = file.metadata.find(key);
  if (it == file.metadata.end()) throw std::invalid_argument(file.path + ": no '" + key + "' in its metadata");
  char* end = nullptr;
  const double value = std::strtod(it->second.c_str(), &end);
  if (it->second.empty() || *end != '\0')
    throw std::invalid_argument(file.path + ": metadata '" + key + "' is not a number: '" + it->second + "'");
  return value;
}

}  // namespace

void save_model(const std::string& path, const nn::Module& model, const std::map<std::string, std::string>& metadata,
                io::FloatStorage floats) {
  io::save_safetensors(path, model_tensors(model), metadata, floats);
}

void save_training_checkpoint(const std::string& path, const nn::Module& model, const Sgd& sgd,
                              const TrainingState& state, const std::vector<nn::NamedTensor>& extra,
                              const std::map<std::string, std::string>& extra_metadata) {
  std::vector<nn::NamedTensor> tensors = model_tensors(model);
  tensors.emplace_back(std::string(kStatePrefix) + "optimizer.momentum_buffer", sgd.momentum_buffer());
  for (const auto& [name, t] : extra) {
    if (name.rfind(kStatePrefix, 0) != 0) throw std::logic_error("checkpoint state tensor '" + name + "' lacks the prefix");
    tensors.emplace_back(name, t);
  }
  std::map<std::string, std::string> metadata = {
      {"polyak.epoch", std::to_string(state.epoch)},
      {"polyak.step", std::to_string(state.step)},
      {"polyak.optimizer_steps", std::to_string(sgd.steps_taken())},
      {"polyak.rng_seed", std::to_string(state.rng.seed)},
      {"polyak.rng_position", std::to_string(state.rng.position)},
      {"polyak.loader_epoch", std::to_string(state.loader.epoch)},
      {"polyak.loader_next_batch", std::to_string(state.loader.next_batch)},
      {"polyak.epoch_loss_sum", hex_double(state.epoch_loss_sum)},
      {"polyak.epoch_correct", std::to_string(state.epoch_correct)},
      {"polyak.epoch_seen", std::to_string(state.epoch_seen)},
      {"polyak.epoch_skipped", std::to_string(state.epoch_skipped)},
      {"polyak.consecutive_skips", std::to_string(state.consecutive_skips)},
      {"polyak.config", state.config_json},
  };
  for (const auto& [key, value] : extra_metadata) {
    if (key.rfind(kStatePrefix, 0) != 0) throw std::logic_error("checkpoint metadata '" + key + "' lacks the prefix");
    metadata[key] = value;
  }
  io::save_safetensors(path, tensors, metadata);
}

std::string checkpoint_architecture(const io::SafetensorsFile& file) {
  if (const auto it = file.metadata.find("polyak.model"); it != file.metadata.end()) return it->second;
  if (const auto it = file.metadata.find("polyak.config"); it != file.metadata.end()) {
    const nlohmann::json config = nlohmann::json::parse(it->second, nullptr, false);
    if (config.is_object() && config.contains("model") && config["model"].is_string()) return config["model"];
  }
  return "";
}

std::string head_weight_name(nn::Module& model) {
  auto* classifier = dynamic_cast<models::Classifier*>(&model);
  if (!classifier) return "";
  const nn::Module* head = &classifier->head();
  for (const auto& [name, module] : model.named_modules())
    if (module == head) return name.empty() ? "weight" : name + ".weight";
  return "";
}

int64_t checkpoint_classes(const io::SafetensorsFile& file, nn::Module& model) {
  const std::string head_weight = head_weight_name(model);
  if (head_weight.empty() || !file.contains(head_weight) || file.at(head_weight).dim() != 2) return -1;
  return file.at(head_weight).size(0);
}

io::SafetensorsFile load_model(const std::string& path, nn::Module& model, const std::string& architecture) {
  io::SafetensorsFile file = io::load_safetensors(path);
  load_model(file, model, architecture);
  return file;
}

void load_model(const io::SafetensorsFile& file, nn::Module& model, const std::string& architecture) {
  const std::string& path = file.path;
  const std::string recorded = checkpoint_architecture(file);
  // A clearer message than a shape mismatch for the common mistake: another dataset.
  const int64_t trained_for = checkpoint_classes(file, model);
  if (auto* classifier = dynamic_cast<models::Classifier*>(&model); classifier && trained_for >= 0) {
    const int64_t classes = classifier->head().weight.size(0);
    if (trained_for != classes)
      throw std::invalid_argument(path + ": " + (recorded.empty() ? "a model" : "a " + recorded) + " for " +
                                  std::to_string(trained_for) + " classes, but the dataset has " + std::to_string(classes));
  }
  std::vector<nn::NamedTensor> state;
  for (const auto& [name, t] : file.tensors)
    if (name.rfind(kStatePrefix, 0) != 0) state.emplace_back(name, t);
  try {
    model.load_state_dict(state);
  } catch (const std::invalid_argument& e) {
    if (!recorded.empty() && !architecture.empty() && recorded != architecture)
      throw std::invalid_argument(path + ": holds a " + recorded + " (from its metadata), not a " + architecture + ": " +
                                  e.what());
    throw std::invalid_argument(path + ": does not fit the model: " + e.what());
  }
}

TrainingState load_training_checkpoint(const io::SafetensorsFile& file, nn::Module& model, Sgd& sgd) {
  const std::string& path = file.path;
  load_model(file, model);
  TrainingState state;
  state.epoch = metadata_int(file, "polyak.epoch");
  state.step = metadata_int(file, "polyak.step");
  state.rng.seed = metadata_uint(file, "polyak.rng_seed");
  state.rng.position = metadata_uint(file, "polyak.rng_position");
  state.loader.epoch = metadata_int(file, "polyak.loader_epoch");
  state.loader.next_batch = metadata_int(file, "polyak.loader_next_batch");
  state.epoch_loss_sum = metadata_double(file, "polyak.epoch_loss_sum");
  state.epoch_correct = metadata_int(file, "polyak.epoch_correct");
  state.epoch_seen = metadata_int(file, "polyak.epoch_seen");
  state.epoch_skipped = metadata_int(file, "polyak.epoch_skipped", 0);
  state.consecutive_skips = metadata_int(file, "polyak.consecutive_skips", 0);
  state.config_json = file.metadata.count("polyak.config") ? file.metadata.at("polyak.config") : "";
  const std::string momentum = std::string(kStatePrefix) + "optimizer.momentum_buffer";
  if (!file.contains(momentum)) throw std::invalid_argument(path + ": not a training checkpoint (no '" + momentum + "')");
  try {
    sgd.load_state(file.at(momentum).to(sgd.momentum_buffer().device()), metadata_int(file, "polyak.optimizer_steps"));
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + ": optimiser state does not fit: " + e.what());
  }
  return state;
}

}  // namespace polyak::app
