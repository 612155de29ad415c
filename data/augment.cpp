#include "data/augment.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace polyak::data {

CropFlip draw_crop_flip(const AugmentOptions& options, Rng& rng) {
  if (options.pad < 0) throw std::invalid_argument("augmentation: pad must be >= 0, got " + std::to_string(options.pad));
  CropFlip cf;
  cf.dy = cf.dx = options.pad;
  if (options.crop) {
    const auto span = static_cast<uint64_t>(2 * options.pad + 1);
    cf.dy = static_cast<int>(rng.below(span));
    cf.dx = static_cast<int>(rng.below(span));
  }
  if (options.flip && !options.alternate_flip) cf.flip = rng.below(2) == 1;
  return cf;
}

bool alternating_flip(uint64_t flip_seed, int64_t index, int64_t epoch) {
  // Philox keyed by seed + index: neighbouring keys give unrelated streams.
  const bool coin = Rng(flip_seed + static_cast<uint64_t>(index)).below(2) == 1;
  return coin != (epoch % 2 == 1);
}

namespace {

// PyTorch's 'reflect' index: -1 -> 1, n -> n - 2 (for |overhang| < n).
int reflect_index(int i, int n) { return i < 0 ? -i : i >= n ? 2 * (n - 1) - i : i; }

// crop_flip with the reflected image as padding: every output pixel reads a source pixel.
void crop_flip_reflect(const uint8_t* src, int channels, int height, int width, int pad, const CropFlip& cf,
                       uint8_t* dst) {
  const int shift_y = cf.dy - pad, shift_x = cf.dx - pad;
  for (int c = 0; c < channels; ++c) {
    const uint8_t* plane = src + static_cast<int64_t>(c) * height * width;
    for (int y = 0; y < height; ++y) {
      const uint8_t* row = plane + static_cast<int64_t>(reflect_index(y + shift_y, height)) * width;
      uint8_t* out = dst + (static_cast<int64_t>(c) * height + y) * width;
      for (int x = 0; x < width; ++x) out[x] = row[reflect_index((cf.flip ? width - 1 - x : x) + shift_x, width)];
    }
  }
}

}  // namespace

void crop_flip(const uint8_t* src, int channels, int height, int width, int pad, const CropFlip& cf, uint8_t* dst,
               bool reflect) {
  if (reflect) {
    if (pad >= height || pad >= width)
      throw std::invalid_argument("augmentation: reflect padding needs pad < the image's height and width, got pad " +
                                  std::to_string(pad));
    return crop_flip_reflect(src, channels, height, width, pad, cf, dst);
  }
  // Row y of the output reads source row sy = y + dy - pad; column x reads source column
  // sx = x' + dx - pad. Rows or columns outside the source are the zero padding.
  const int shift_y = cf.dy - pad, shift_x = cf.dx - pad;
  // Output columns [x0, x1) (before the flip) come from the source; the rest are zero.
  const int x0 = std::clamp(-shift_x, 0, width), x1 = std::clamp(width - shift_x, 0, width);
  for (int c = 0; c < channels; ++c) {
    for (int y = 0; y < height; ++y) {
      uint8_t* out = dst + (static_cast<int64_t>(c) * height + y) * width;
      const int sy = y + shift_y;
      if (sy < 0 || sy >= height || x0 >= x1) {
        std::memset(out, 0, width);
        continue;
      }
      const uint8_t* row = src + (static_cast<int64_t>(c) * height + sy) * width;
      if (!cf.flip) {
        std::memset(out, 0, x0);
        std::memcpy(out + x0, row + x0 + shift_x, x1 - x0);
        std::memset(out + x1, 0, width - x1);
      } else {
        for (int x = 0; x < width; ++x) {
          const int xu = width - 1 - x;  // the column before the flip
          out[x] = xu >= x0 && xu < x1 ? row[xu + shift_x] : 0;
        }
      }
    }
  }
}

void write_batch(const ImageSet& set, const std::vector<int64_t>& indices, const Normalizer& normalizer,
                 const AugmentOptions* augment, Rng* rng, float* dst, int64_t epoch) {
  if (normalizer.channels() != set.channels) {
    throw std::invalid_argument("write_batch: the normaliser has " + std::to_string(normalizer.channels()) +
                                " channels, the set " + std::to_string(set.channels));
  }
  if (augment && !rng) throw std::invalid_argument("write_batch: augmentation needs an Rng");
  const int64_t size = set.image_size(), plane = int64_t{set.height} * set.width;
  std::vector<uint8_t> scratch(augment ? size : 0);
  for (size_t i = 0; i < indices.size(); ++i) {
    const int64_t index = indices[i];
    if (index < 0 || index >= set.count) {
      throw std::out_of_range("write_batch: index " + std::to_string(index) + " is outside a set of " +
                              std::to_string(set.count) + " images");
    }
    const uint8_t* image = set.image(index);
    if (augment) {
      CropFlip cf = draw_crop_flip(*augment, *rng);
      if (augment->flip && augment->alternate_flip) cf.flip = alternating_flip(augment->flip_seed, index, epoch);
      crop_flip(image, set.channels, set.height, set.width, augment->pad, cf, scratch.data(), augment->reflect);
      image = scratch.data();
    }
    normalizer.image(image, plane, dst + static_cast<int64_t>(i) * size);
  }
}

}  // namespace polyak::data
