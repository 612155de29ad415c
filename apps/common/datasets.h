// Datasets by name, as the apps' --dataset and --data flags name them.
//
//   cifar10, cifar100  the official binary files (plain or .gz) in DIR
//   folder             DIR/train/<class>/*.png|jpg and, if present, DIR/test/<class>/...
//                      (else DIR/val/...), images resized to 32x32
// Without --data, the folder is $POLYAK_DATA/<name>, else ../shared/data/<name>.
#pragma once

#include <cstdint>
#include <string>

#include "data/cifar.h"

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

}  // namespace polyak::app
