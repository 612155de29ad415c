// Training augmentation on uint8 CHW images, and batches written straight into float.
//
// The standard CIFAR recipe: pad the image by `pad` zero pixels on every side, cut a
// random H x W window out of the padded image (offsets dy, dx uniform in 0..2*pad),
// then mirror it left-right with probability 1/2 (crop first, then flip, as
// torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip()):
//   out[c][y][x] = padded[c][y + dy][x' + dx],  x' = flip ? W-1-x : x,
//   padded[c][i][j] = img[c][i - pad][j - pad] inside the image, 0 outside.
// Draws, per image and in this order: dy = rng.below(2*pad+1), dx = rng.below(2*pad+1)
// (both only when crop is on), flip = rng.below(2) == 1 (only when flip is on). So a
// given Rng state gives the same augmentation on every machine and thread.
//
// airbench94's variants (Keller Jordan's CIFAR-10 speedrun):
//   reflect         the padding mirrors the image instead of being zeros, as PyTorch's
//                   F.pad(..., 'reflect'): padded row -1 is row 1, row H is row H-2
//                   (the edge is not repeated); needs pad < H and pad < W.
//   alternate_flip  each image is mirrored or not by a fair coin tossed once for the
//                   whole run (from flip_seed and the image's index, no Rng draw), and
//                   every image the other way in odd epochs: over any two epochs each
//                   image is seen both ways, where independent coins would leave a
//                   quarter of them unmirrored (or mirrored) twice.
#pragma once

#include <cstdint>
#include <vector>

#include "data/cifar.h"
#include "data/normalize.h"
#include "engine/rng.h"

namespace polyak::data {

struct AugmentOptions {
  bool crop = true;  // random crop of the zero-padded image
  int pad = 4;
  bool flip = true;  // horizontal flip with probability 1/2
  bool reflect = false;
  bool alternate_flip = false;  // with flip
  uint64_t flip_seed = 0;       // alternate_flip's coins (the Loader derives it from its seed)
};

// One image's random choices.
struct CropFlip {
  int dy = 0, dx = 0;  // window offset in the padded image, 0..2*pad (pad, pad = no shift)
  bool flip = false;
};

// Draws one image's choices from `rng` in the documented order. Without crop the
// offsets are (pad, pad): the image unshifted. With alternate_flip the flip is not
// drawn (alternating_flip gives it).
CropFlip draw_crop_flip(const AugmentOptions& options, Rng& rng);

// Whether image `index` is mirrored in epoch `epoch` under alternate_flip.
bool alternating_flip(uint64_t flip_seed, int64_t index, int64_t epoch);

// Applies `cf` to one CHW image `src` into `dst` (same shape; must not overlap), the
// padding zeros or (`reflect`) the mirrored image.
void crop_flip(const uint8_t* src, int channels, int height, int width, int pad, const CropFlip& cf, uint8_t* dst,
               bool reflect = false);

// The images at `indices` of `set`, in order, normalised with `normalizer` into `dst`
// (indices.size() * set.image_size() floats, (B, C, H, W)). With `augment` non-null,
// each image is first cropped and flipped with draws from `rng` (image by image, in
// order); with it null, `rng` is not touched and may be null. `epoch` matters only to
// alternate_flip.
void write_batch(const ImageSet& set, const std::vector<int64_t>& indices, const Normalizer& normalizer,
                 const AugmentOptions* augment, Rng* rng, float* dst, int64_t epoch = 0);

}  // namespace polyak::data
