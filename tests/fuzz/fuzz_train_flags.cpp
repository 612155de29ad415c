// The train app's command line (apps/train/main.cpp up to the first file it touches):
// CLI11 parsing into TrainConfig, resolve() and validate(), then what run_training does
// with the flags before any data is read: the EMA options for the run's length, and the
// config.json written to the run folder, which --resume reads back (it must read back
// as written). See fuzz_flags.h.
#include "apps/train/config.h"
#include "fuzz_flags.h"

using namespace polyak;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CLI::App app{"polyak train: train a network on CIFAR or an image folder"};
  app.set_config();
  app::TrainConfig config;
  app::add_train_flags(app, config);
  fuzz::fuzz_command_line("train", app, data, size, [&] {
    config.resolve();
    config.validate();
    // CIFAR's 50,000 training images in batches, as the loader counts them.
    const int64_t steps_per_epoch = (50000 + config.batch_size - 1) / config.batch_size;
    (void)config.ema_options(config.epochs * steps_per_epoch);
    const std::string json = config.to_json();
    fuzz::require(app::TrainConfig::from_json(json).to_json() == json, "config.json reads back as written");
    return 0;
  });
  return 0;
}
