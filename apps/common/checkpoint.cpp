#include "apps/common/checkpoint.h"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace polyak::app {

namespace {

std::vector<nn::NamedTensor> model_tensors(const nn::Module& model) { return model.state_dict(); }

int64_t metadata_int(const io::SafetensorsFile& file, const std::string& key) {
  const auto it = file.metadata.find(key);
  if (it == file.metadata.end())
    throw std::runtime_error(file.path + ": not a training checkpoint (no '" + key + "' in its metadata)");
  try {
    size_t used = 0;
    const long long value = std::stoll(it->second, &used);
    if (used != it->second.size()) throw std::invalid_argument("trailing characters");
    return value;
  } catch (const std::exception&) {
    throw std::runtime_error(file.path + ": metadata '" + key + "' is not an integer: '" + it->second + "'");
  }
}

// Doubles travel as C99 hexadecimal floats: exact, and readable back with strtod.
std::string hex_double(double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", value);
  return buf;
}

double metadata_double(const io::SafetensorsFile& file, const std::string& key) {
  const auto it = file.metadata.find(key);
  if (it == file.metadata.end()) throw std::runtime_error(file.path + ": no '" + key + "' in its metadata");
  char* end = nullptr;
  const double value = std::strtod(it->second.c_str(), &end);
  if (it->second.empty() || *end != '\0')
    throw std::runtime_error(file.path + ": metadata '" + key + "' is not a number: '" + it->second + "'");
  return value;
}

}  // namespace

void save_model(const std::string& path, const nn::Module& model, const std::map<std::string, std::string>& metadata) {
  io::save_safetensors(path, model_tensors(model), metadata);
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
      {"polyak.config", state.config_json},
  };
  for (const auto& [key, value] : extra_metadata) {
    if (key.rfind(kStatePrefix, 0) != 0) throw std::logic_error("checkpoint metadata '" + key + "' lacks the prefix");
    metadata[key] = value;
  }
  io::save_safetensors(path, tensors, metadata);
}

io::SafetensorsFile load_model(const std::string& path, nn::Module& model) {
  io::SafetensorsFile file = io::load_safetensors(path);
  std::vector<nn::NamedTensor> state;
  for (const auto& [name, t] : file.tensors)
    if (name.rfind(kStatePrefix, 0) != 0) state.emplace_back(name, t);
  try {
    model.load_state_dict(state);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(path + ": does not fit the model: " + e.what());
  }
  return file;
}

TrainingState load_training_checkpoint(const std::string& path, nn::Module& model, Sgd& sgd, io::SafetensorsFile* out) {
  io::SafetensorsFile file = load_model(path, model);
  TrainingState state;
  state.epoch = metadata_int(file, "polyak.epoch");
  state.step = metadata_int(file, "polyak.step");
  state.rng.seed = static_cast<uint64_t>(metadata_int(file, "polyak.rng_seed"));
  state.rng.position = static_cast<uint64_t>(metadata_int(file, "polyak.rng_position"));
  state.loader.epoch = metadata_int(file, "polyak.loader_epoch");
  state.loader.next_batch = metadata_int(file, "polyak.loader_next_batch");
  state.epoch_loss_sum = metadata_double(file, "polyak.epoch_loss_sum");
  state.epoch_correct = metadata_int(file, "polyak.epoch_correct");
  state.epoch_seen = metadata_int(file, "polyak.epoch_seen");
  state.config_json = file.metadata.count("polyak.config") ? file.metadata.at("polyak.config") : "";
  const std::string momentum = std::string(kStatePrefix) + "optimizer.momentum_buffer";
  if (!file.contains(momentum)) throw std::runtime_error(path + ": not a training checkpoint (no '" + momentum + "')");
  try {
    sgd.load_state(file.at(momentum).to(sgd.momentum_buffer().device()), metadata_int(file, "polyak.optimizer_steps"));
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(path + ": optimiser state does not fit: " + e.what());
  }
  if (out) *out = std::move(file);
  return state;
}

}  // namespace polyak::app
