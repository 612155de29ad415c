// The CIFAR-N label-file reader (data/labels.cpp, load_label_file as the train app calls
// it for --labels). Byte 0 is the number of classes, byte 1 sets the expected label count
// to the file size - 1, + 0 or + 1 (so a wrong size is reached too); the other bytes are
// the file. A DataError is the reader rejecting the file; anything else escaping, a
// broken invariant or a sanitizer report is a bug.
#include "data/labels.h"
#include "fuzz_support.h"

namespace fs = std::filesystem;
using namespace polyak;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const fs::path file = fuzz::scratch_dir() / "labels.u8";
  fuzz::write_file(file, data + 2, size - 2);
  data::ImageSet set;
  set.num_classes = data[0];
  set.count = static_cast<int64_t>(size - 2) - 1 + data[1] % 3;
  set.labels.assign(static_cast<size_t>(std::max<int64_t>(set.count, 0)), 0);
  const std::vector<int64_t> clean = set.labels;
  try {
    const data::NoisyLabels labels = data::load_label_file(set, file.string());
    fuzz::require(labels.count() == set.count && labels.clean == clean && set.labels == labels.labels,
                  "the file's labels replace the set's, the old ones kept as clean");
    for (size_t i = 0; i < labels.labels.size(); ++i) {
      fuzz::require(labels.labels[i] == data[2 + i] && labels.labels[i] < set.num_classes, "label i is byte i, in range");
    }
  } catch (const data::DataError&) {
  }
  fs::remove(file);
  return 0;
}
