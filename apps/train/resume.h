// --resume: what a training checkpoint (last.safetensors) holds, read and checked
// before a run continues from it. The checkpoint carries the run's configuration, its
// counters, the optimiser's momentum, the averages and the model selection so far; a
// hand-edited or corrupted one must give one clear error (std::invalid_argument naming
// the file and what is wrong), never a crash and never a silently different run.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "apps/common/checkpoint.h"
#include "apps/train/config.h"
#include "ema/ema.h"

namespace polyak::app {

// The file at `path`, read whole.
io::SafetensorsFile read_resumed_checkpoint(const std::string& path);

// The configuration a --resume continues: the checkpoint's, with only the settings
// that do not change the result taken from the command line (`given`).
TrainConfig resumed_config(const TrainConfig& given, const io::SafetensorsFile& file);

// Restores the model, the optimiser and the averages (when the run has any) from
// `file`, and returns the counters and the selection so far, each checked against the
// run it continues (`config`, `steps_per_epoch`). A failed check ends the process
// before it writes anything.
struct Resumed {
  TrainingState state;
  nlohmann::json selection = nlohmann::json::object();
  int ranks = 1;  // of the job that saved it (polyak.ranks; checkpoints before it: 1)
};
Resumed restore_run(const io::SafetensorsFile& file, const TrainConfig& config, int64_t steps_per_epoch,
                    nn::Module& model, Sgd& sgd, ema::EmaSet* averages);

}  // namespace polyak::app
