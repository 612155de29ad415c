// The image-folder loader (data/folder.cpp) on a folder of one class holding one image
// whose bytes are the input after byte 0: the loader's own checks (JPEG markers, BMP
// sizes, the pixel limit), stb_image decoding (JPEG, PNG or BMP, detected from the
// bytes whatever the extension), the resize, the CHW copy and the statistics. Byte 0 picks
// the target size: height 1 + 3 * (low 4 bits), width 1 + 3 * (high 4 bits), so both
// shrinking and growing are reached. A DataError is the loader rejecting the image;
// anything else escaping, a broken invariant or a sanitizer report is a bug.
#include <cmath>

#include "data/folder.h"
#include "fuzz_support.h"

namespace fs = std::filesystem;
using namespace polyak;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  data::FolderOptions options;
  options.height = 1 + 3 * (data[0] & 15);
  options.width = 1 + 3 * (data[0] >> 4);
  // A million pixels: larger images take the same path (the size check), and decoding
  // and resampling tens of megapixels under the sanitizers outlasts the timeout.
  options.max_pixels = int64_t{1} << 20;
  const fs::path root = fuzz::scratch_dir() / "images";
  fs::create_directories(root / "class");
  const fs::path file = root / "class" / "image.png";
  fuzz::write_file(file, data + 1, size - 1);
  try {
    const data::ImageSet set = data::load_image_folder(root.string(), options);
    fuzz::require(set.count == 1 && set.labels.size() == 1 && set.labels[0] == 0, "one image of class 0");
    fuzz::require(set.pixels.size() == static_cast<size_t>(3 * options.height * options.width), "3 x H x W pixels");
    for (int c = 0; c < 3; ++c) {
      fuzz::require(std::isfinite(set.mean[c]) && set.mean[c] >= 0 && set.mean[c] <= 1, "mean in [0, 1]");
      fuzz::require(std::isfinite(set.stddev[c]) && set.stddev[c] > 0, "stddev finite and positive");
    }
  } catch (const data::DataError&) {
  }
  fs::remove(file);
  return 0;
}
