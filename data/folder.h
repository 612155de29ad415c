// An image-folder dataset: root/<class name>/<image files>, like torchvision's
// ImageFolder, read into an ImageSet of uint8 CHW images.
//
//   classes   the subfolders of root, sorted by name (byte order), get labels 0..K-1;
//             folders whose name starts with '.' are skipped. FolderOptions::classes
//             fixes the list and order instead (so a test folder gets the labels of its
//             train folder), and then each of those folders must exist.
//   images    the regular files of each class folder (not its subfolders) whose
//             extension is .png, .jpg, .jpeg or .bmp (any case), sorted by name; other
//             files are ignored. Decoded with stb_image forced to 3 channels (grey is
//             replicated, alpha is dropped, 16-bit is reduced to 8), then resized to
//             height x width with stb_image_resize (stbir_resize_uint8: Mitchell filter
//             when shrinking, cubic when growing) unless already that size.
//   order     class by class, and by file name within a class.
//   mean/std  per channel, of x/255 over every pixel of the set (the population std;
//             a channel with zero spread gets std 1), so to_tensor and the loader
//             normalise to zero mean and unit variance; stats_from_data = false gives
//             0.5 / 0.5 (values in [-1, 1]) instead. For a test folder, copy the train
//             set's mean and stddev over.
// Errors are DataError naming the file (cannot read, cannot decode) or the folder
// (missing, no class folders, a class folder without images).
#pragma once

#include <string>
#include <vector>

#include "data/cifar.h"

namespace polyak::data {

struct FolderOptions {
  int height = 32, width = 32;       // every image is resized to this
  std::vector<std::string> classes;  // empty: every subfolder of root, sorted
  bool stats_from_data = true;       // else mean = stddev = 0.5 per channel
  // Larger images are refused before decoding (a small file must not make the loader
  // allocate and resample gigabytes): 8192 x 8192 by default, 192 MiB as RGB.
  int64_t max_pixels = int64_t{1} << 26;
};

ImageSet load_image_folder(const std::string& root, const FolderOptions& options = {});

}  // namespace polyak::data
