#include "apps/eval/checkpoint_model.h"

#include <algorithm>
#include <stdexcept>

#include "engine/rng.h"
#include "models/registry.h"

namespace polyak::app {

namespace {

constexpr const char* kEmaPrefix = "polyak.ema.";

}  // namespace

std::vector<std::string> checkpoint_averages(const io::SafetensorsFile& file) {
  std::vector<std::string> names;
  const std::string suffix = ".params";
  for (const auto& [name, tensor] : file.tensors) {
    if (name.rfind(kEmaPrefix, 0) != 0 || name.size() <= suffix.size() + 11 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    names.push_back(name.substr(11, name.size() - 11 - suffix.size()));
  }
  return names;
}

CheckpointModel load_checkpoint_model(const std::string& path, const std::string& model_flag, int classes, Device device) {
  CheckpointModel m;
  m.path = path;
  m.file = io::load_safetensors(path);
  const std::string recorded = checkpoint_architecture(m.file);
  if (!model_flag.empty() && !recorded.empty() && model_flag != recorded)
    throw std::invalid_argument("--model " + model_flag + ": " + path + " holds a " + recorded +
                                " (from its metadata); pass --model " + recorded + " or leave --model out");
  m.architecture = model_flag.empty() ? recorded : model_flag;
  if (m.architecture.empty())
    throw std::invalid_argument(path + ": the checkpoint does not name its architecture; pass --model");
  const auto& names = models::model_names();
  if (std::find(names.begin(), names.end(), m.architecture) == names.end())
    throw std::invalid_argument(path + ": unknown architecture '" + m.architecture + "'");

  Rng unused(0);
  m.model = models::create_model(m.architecture, classes > 0 ? classes : 2, unused);
  // The class count the checkpoint was trained for, from its head's weight.
  const int64_t trained_for = checkpoint_classes(m.file, *m.model);
  if (classes <= 0) {
    if (trained_for < 2)
      throw std::invalid_argument(path + ": does not fit a " + m.architecture + ": no 2-D tensor '" +
                                  head_weight_name(*m.model) + "'");
    if (trained_for != 2) m.model = models::create_model(m.architecture, static_cast<int>(trained_for), unused);
  } else if (trained_for >= 0 && trained_for != classes) {
    // A clearer message than a shape mismatch for the common mistake: another dataset.
    throw std::invalid_argument(path + ": a " + m.architecture + " for " + std::to_string(trained_for) +
                                " classes, but the dataset has " + std::to_string(classes));
  }
  m.model->to(device);
  m.model->pack_arenas();
  load_weights(m, "sgd");
  return m;
}

void load_weights(CheckpointModel& m, const std::string& weights) {
  std::vector<nn::NamedTensor> state;
  for (const auto& [name, t] : m.file.tensors)
    if (name.rfind("polyak.", 0) != 0) state.emplace_back(name, t);
  try {
    m.model->load_state_dict(state);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(m.path + ": does not fit a " + m.architecture + ": " + e.what());
  }
  if (weights == "sgd") return;

  const std::vector<std::string> held = checkpoint_averages(m.file);
  if (std::find(held.begin(), held.end(), weights) == held.end()) {
    std::string list;
    for (const std::string& h : held) list += (list.empty() ? "" : ", ") + h;
    throw std::invalid_argument("--ema " + weights + ": " + m.path + " holds " +
                                (held.empty() ? std::string("no averages") : "the averages " + list));
  }
  const auto copy_arena = [&](const Tensor& arena, const std::string& name) {
    const Tensor& src = m.file.at(name);
    if (src.numel() != arena.numel() || src.dtype() != arena.dtype())
      throw std::invalid_argument(m.path + ": '" + name + "' has " + std::to_string(src.numel()) + " values, the " +
                                  m.architecture + " arena " + std::to_string(arena.numel()));
    if (arena.numel() > 0) Tensor(arena).copy_(src.reshape(arena.shape()));
  };
  copy_arena(m.model->parameter_arena(), kEmaPrefix + weights + ".params");
  copy_arena(m.model->buffer_arena(), kEmaPrefix + weights + ".buffers");
}

}  // namespace polyak::app
