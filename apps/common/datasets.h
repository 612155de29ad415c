// Datasets by name, as the apps' --dataset and --data flags name them.
//
//   cifar10, cifar100  the official binary files (plain or .gz) in DIR
//   folder             DIR/train/<class>/*.png|jpg and, if present, DIR/test/<class>/...
//                      (else DIR/val/...), images resized to 32x32
// Without --data, the folder is $POLYAK_DATA/<name>, else ../shared/data/<name>.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "apps/common/cli.h"
#include "data/cifar.h"
#include "engine/parallel.h"

namespace polyak::app {

struct Datasets {
  data::ImageSet train;
  data::ImageSet test;  // count 0 when the folder dataset has no test folder
};

std::string default_data_dir(const std::string& dataset);
// Throws data::DataError (bad or missing files) or std::invalid_argument (unknown name).
Datasets load_datasets(const std::string& dataset, const std::string& dir);
// Keeps the first n images of `set` (all when n is 0 or not smaller than the set):
// --train-subset and --test-subset.
void keep_first(data::ImageSet& set, int64_t n);

// How eval and probe start: the default --data folder, the config's own checks
// (std::invalid_argument naming a bad flag), the thread count; returns the device.
template <class Config>
Device start_app(Config& config) {
  if (config.data_dir.empty()) config.data_dir = default_data_dir(config.dataset);
  config.validate();
  if (config.threads) set_num_threads(config.threads);
  return device_from_flag(config.device);
}

// Where an app prints its table: standard output, or standard error when --json - gives
// standard output to the JSON.
inline FILE* table_stream(const std::string& json_flag) { return json_flag == "-" ? stderr : stdout; }

}  // namespace polyak::app
