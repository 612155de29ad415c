#include "apps/common/datasets.h"

#include <cstdlib>
#include <numeric>
#include <vector>
#include <filesystem>
#include <stdexcept>

#include "data/folder.h"

namespace polyak::app {

std::string default_data_dir(const std::string& dataset) {
  const char* env = std::getenv("POLYAK_DATA");
  return (std::filesystem::path(env && *env ? env : "../shared/data") / dataset).string();
}

Datasets load_datasets(const std::string& dataset, const std::string& dir) {
  if (dataset == "cifar10")
    return {data::load_cifar10(dir, data::CifarSplit::Train), data::load_cifar10(dir, data::CifarSplit::Test)};
  if (dataset == "cifar100")
    return {data::load_cifar100(dir, data::CifarSplit::Train), data::load_cifar100(dir, data::CifarSplit::Test)};
  if (dataset == "folder") {
    const std::filesystem::path root(dir);
    Datasets sets;
    sets.train = data::load_image_folder((root / "train").string());
    for (const char* held_out : {"test", "val"}) {
      std::error_code ec;
      if (!std::filesystem::is_directory(root / held_out, ec)) continue;
      // The held-out split uses the train split's classes and normalisation.
      data::FolderOptions options;
      options.classes = sets.train.class_names;
      sets.test = data::load_image_folder((root / held_out).string(), options);
      sets.test.mean = sets.train.mean;
      sets.test.stddev = sets.train.stddev;
      break;
    }
    return sets;
  }
  throw std::invalid_argument("unknown dataset '" + dataset + "' (expected cifar10, cifar100 or folder)");
}

void keep_first(data::ImageSet& set, int64_t n) {
  if (n <= 0 || n >= set.count) return;
  std::vector<int64_t> first(static_cast<size_t>(n));
  std::iota(first.begin(), first.end(), 0);
  set = data::subset(set, first);
}

}  // namespace polyak::app
