// Models rebuilt from checkpoints, for the apps that read them (eval, probe).
//
// A checkpoint names its architecture in its metadata: "polyak.model" in the model-only
// files the train app writes (init, model, best_*), or the "model" field of the run
// configuration "polyak.config" in a training checkpoint (last.safetensors). A --model
// flag may name it instead (for files from elsewhere, e.g. exported from PyTorch) and
// must then agree with the metadata.
//
// Which weights: "sgd" are the checkpoint's own model tensors (the live weights of the
// run); "ema0.998" etc. are the averages a training checkpoint stores as flat copies of
// the parameter and float-buffer arenas, "polyak.ema.<name>.params|buffers" (see
// ema::EmaSet::state_tensors), loaded by copying them over the model's arenas.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "apps/common/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/nn/module.h"

namespace polyak::app {

struct CheckpointModel {
  std::string path;
  std::string architecture;           // "resnet20", ...
  std::shared_ptr<nn::Module> model;  // arenas packed, on the requested device
  io::SafetensorsFile file;           // the whole checkpoint (tensors on the CPU)
};

// The averages a training checkpoint holds ("ema0.968", ...), in the order of its tensors.
std::vector<std::string> checkpoint_averages(const io::SafetensorsFile& file);

// Reads `path` and builds its architecture (`model_flag` when not empty) for `classes`
// classes (0: as many as the checkpoint's last layer has) on `device`, with the
// checkpoint's own weights ("sgd"). Throws std::invalid_argument naming the file and
// what does not fit: no architecture known, --model disagreeing with the metadata,
// another class count, a tensor that is missing or of another shape.
CheckpointModel load_checkpoint_model(const std::string& path, const std::string& model_flag, int classes, Device device);

// Puts the weights `weights` ("sgd" or an average's name) of the checkpoint into its
// model. Throws std::invalid_argument when the checkpoint has no such average.
void load_weights(CheckpointModel& m, const std::string& weights);

}  // namespace polyak::app
