// The CIFAR-10/100 binary readers (data/cifar.cpp) on one test-split file, plain or gzip.
// Input byte 0 picks the case: bit 0 gzip (the file is NAME.gz), bit 1 CIFAR-100
// (test.bin) instead of CIFAR-10 (test_batch.bin), bit 2 coarse instead of fine CIFAR-100
// labels. The other bytes are the file. A DataError is the reader rejecting bad data;
// any other exception escaping, a broken invariant or a sanitizer report is a bug.
#include "data/cifar.h"
#include "fuzz_support.h"

namespace fs = std::filesystem;
using namespace polyak;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool gz = data[0] & 1, cifar100 = data[0] & 2;
  const auto label = data[0] & 4 ? data::CifarLabel::Coarse : data::CifarLabel::Fine;
  const fs::path& dir = fuzz::scratch_dir();
  const fs::path file = dir / (std::string(cifar100 ? "test.bin" : "test_batch.bin") + (gz ? ".gz" : ""));
  fuzz::write_file(file, data + 1, size - 1);
  try {
    const data::ImageSet set = cifar100 ? data::load_cifar100(dir.string(), data::CifarSplit::Test, label)
                                        : data::load_cifar10(dir.string(), data::CifarSplit::Test);
    fuzz::require(set.count > 0, "an accepted file holds at least one record");
    fuzz::require(set.pixels.size() == static_cast<size_t>(set.count * set.image_size()), "count * 3072 pixels");
    fuzz::require(set.labels.size() == static_cast<size_t>(set.count), "one label per image");
    for (int64_t y : set.labels) fuzz::require(y >= 0 && y < set.num_classes, "labels in [0, num_classes)");
  } catch (const data::DataError&) {
  }
  fs::remove(file);
  return 0;
}
