// The train app's command line (apps/train/main.cpp up to the first file it touches):
// CLI11 parsing into TrainConfig, resolve() and validate(), then what run_training does
// with the flags before any data is read: the EMA options for the run's length, and the
// config.json written to the run folder, which --resume reads back. The input is split
// into argv words at whitespace. run_app turns bad flags into exit code 2 (and --help
// into 0); exit code 1 ("other errors"), an exception escaping, a config.json that does
// not read back as written, or a sanitizer report is a bug.
#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "apps/common/cli.h"
#include "apps/train/config.h"
#include "fuzz_support.h"

using namespace polyak;

namespace {

std::vector<std::string> split_words(const uint8_t* data, size_t size) {
  std::vector<std::string> words = {"train"};
  std::string word;
  for (size_t i = 0; i <= size; ++i) {
    const char c = i < size ? static_cast<char>(data[i]) : ' ';
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\0') {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word += c;
    }
  }
  return words;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> words = split_words(data, size);
  std::vector<char*> argv;
  for (std::string& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);

  CLI::App app{"polyak train: train a network on CIFAR or an image folder"};
  app.set_config();
  app::TrainConfig config;
  app::add_train_flags(app, config);
  const int code = app::run_app("train", app, static_cast<int>(words.size()), argv.data(), [&] {
    config.resolve();
    config.validate();
    // CIFAR's 50,000 training images in batches, as the loader counts them.
    const int64_t steps_per_epoch = (50000 + config.batch_size - 1) / config.batch_size;
    (void)config.ema_options(config.epochs * steps_per_epoch);
    const std::string json = config.to_json();
    fuzz::require(app::TrainConfig::from_json(json).to_json() == json, "config.json reads back as written");
    return 0;
  });
  fuzz::require(code == 0 || code == 2, "flags are accepted (0) or reported as bad flags (2)");
  return 0;
}
