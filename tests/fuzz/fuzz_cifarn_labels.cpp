// The CIFAR-N label-file reader (data/labels.cpp, read_label_file as the train app calls
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
  const int num_classes = data[0];
  const int64_t count = static_cast<int64_t>(size - 2) - 1 + data[1] % 3;
  try {
    const std::vector<int64_t> labels = data::read_label_file(file.string(), count, num_classes);
    fuzz::require(static_cast<int64_t>(labels.size()) == count, "one label per image");
    for (size_t i = 0; i < labels.size(); ++i) {
      fuzz::require(labels[i] == data[2 + i] && labels[i] < num_classes, "label i is byte i, in range");
    }
  } catch (const data::DataError&) {
  }
  fs::remove(file);
  return 0;
}
