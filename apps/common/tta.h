// Test-time augmentation (TTA): a model's logits for an image averaged over transformed
// views of it, as airbench94 evaluates (its `tta_level`):
//   level 0   f(x)
//   level 1   m(x) = (f(x) + f(mirror x)) / 2
//   level 2   m(x) / 2 + (m(shift(x, -1, -1)) + m(shift(x, +1, +1))) / 4
// where mirror reverses each row and shift(x, dy, dx)[y][x] = x[reflect(y + dy)][reflect(x + dx)]
// moves the picture by one pixel, the edge it uncovers filled by reflection: the two
// views are F.pad(x, 1, 'reflect') cut at [0:H, 0:W] and at [2:H+2, 2:W+2]. Level 2
// costs 6 forward passes per image. Averaging logits (not probabilities) follows the
// recipe.
#pragma once

#include "engine/nn/module.h"

namespace polyak::app {

constexpr int kMaxTtaLevel = 2;

// The TTA logits (N, classes) of a batch of images (N, C, H, W), in the model's current
// mode (call it in eval mode, without gradients).
Tensor tta_logits(nn::Module& model, const Tensor& images, int level);

// The views, on any device (through host memory): the images mirrored left-right, and
// shifted (|dy| < H, |dx| < W).
Tensor mirrored(const Tensor& images);
Tensor shifted_reflect(const Tensor& images, int dy, int dx);

}  // namespace polyak::app
