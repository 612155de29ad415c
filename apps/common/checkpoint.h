// Checkpoints, as safetensors files.
//
// Every checkpoint holds the model under its PyTorch names, so a model-only file
// (init.safetensors, model.safetensors, the kept best ones) loads into the equivalent
// torch model with load_state_dict as it is. A training checkpoint (last.safetensors)
// adds the state that --resume needs to continue a run exactly: the optimiser's
// momentum buffer and other averaging state under names starting with "polyak.", and
// in the metadata the step and epoch counters, the RNG and data-loader positions and
// the resolved run configuration. PyTorch users drop the "polyak." keys.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/loader.h"
#include "engine/io/safetensors.h"
#include "engine/nn/module.h"
#include "engine/optim/sgd.h"
#include "engine/rng.h"

namespace polyak::app {

constexpr const char* kStatePrefix = "polyak.";

struct TrainingState {
  int64_t epoch = 0;  // completed epochs
  int64_t step = 0;   // optimiser steps taken
  Rng::State rng;
  data::Loader::State loader;
  // Running sums of the epoch in progress (a checkpoint may fall inside an epoch), so
  // that a resumed run reports the same training loss and accuracy.
  double epoch_loss_sum = 0;
  int64_t epoch_correct = 0, epoch_seen = 0;
  // Steps skipped for a non-finite loss or gradient (--on-nonfinite skip): in the epoch
  // in progress, and in a row up to now.
  int64_t epoch_skipped = 0, consecutive_skips = 0;
  std::string config_json;  // the run's definition
};

// `floats` F16: float tensors stored as IEEE half (engine/io/safetensors.h), read back as float32.
void save_model(const std::string& path, const nn::Module& model,
                const std::map<std::string, std::string>& metadata = {},
                io::FloatStorage floats = io::FloatStorage::F32);

// `extra` are more state tensors and metadata (their names must start with "polyak.").
void save_training_checkpoint(const std::string& path, const nn::Module& model, const Sgd& sgd,
                              const TrainingState& state, const std::vector<nn::NamedTensor>& extra = {},
                              const std::map<std::string, std::string>& extra_metadata = {});

// The architecture a checkpoint's metadata names ("polyak.model" in model-only files,
// the "model" of the run configuration "polyak.config" in training checkpoints), or "".
std::string checkpoint_architecture(const io::SafetensorsFile& file);
// The name of the weight of `model`'s classifier head ("fc.weight"), "" for a model
// without a separate head.
std::string head_weight_name(nn::Module& model);
// The class count `file` was trained for: the rows of its tensor named as the weight
// of `model`'s classifier head; -1 when it has no such 2-D tensor.
int64_t checkpoint_classes(const io::SafetensorsFile& file, nn::Module& model);

// Copies the model's tensors from any checkpoint into `model` and returns the whole
// file. Throws std::invalid_argument naming the file and what does not fit: the class
// count, or the first tensor that is missing, extra or of another shape (with the
// architecture the file's metadata records, when that is not `architecture`).
io::SafetensorsFile load_model(const std::string& path, nn::Module& model, const std::string& architecture = "");
// The same from a file already read (io::load_safetensors); messages name file.path.
void load_model(const io::SafetensorsFile& file, nn::Module& model, const std::string& architecture = "");

// Restores model and optimiser from a training checkpoint already read, and returns
// the counters; further state (the EMAs, the selection) stays in `file`.
TrainingState load_training_checkpoint(const io::SafetensorsFile& file, nn::Module& model, Sgd& sgd);

}  // namespace polyak::app
