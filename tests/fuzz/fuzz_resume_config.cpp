// The run configuration that --resume reads back (the "polyak.config" of a training
// checkpoint, the same JSON as config.json): TrainConfig::from_json, then what
// run_training does with it before any data is read (resolve, validate, the EMA
// options). A malformed or hand-edited configuration must be refused with
// std::invalid_argument (exit code 2), never crash and never read as a different run:
// an accepted one must write back to JSON that reads back to the same configuration.
#include <string>

#include "apps/train/config.h"
#include "fuzz_support.h"

using namespace polyak;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    app::TrainConfig config = app::TrainConfig::from_json(text);
    const std::string read = config.to_json();
    fuzz::require(app::TrainConfig::from_json(read).to_json() == read, "an accepted configuration reads back as written");
    config.resolve();
    config.validate();
    const int64_t steps_per_epoch = (50000 + config.batch_size - 1) / config.batch_size;
    (void)config.ema_options(config.epochs * steps_per_epoch);
  } catch (const std::invalid_argument&) {  // refused with a reason: exit code 2
  }
  return 0;
}
