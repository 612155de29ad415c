// What the two ways of running Winograd's F(2x2, 3x3) share: image by image
// (winograd.cpp, which has the method) and 16 images in the vector lanes
// (winograd_lanes.cpp): the size of a transformed patch, an image's tiling, and the
// transformed filters packed for the 16 products.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "engine/cpu/conv2d.h"
#include "engine/cpu/sgemm.h"

namespace polyak::cpu {

constexpr int64_t kElements = 16;   // of a transformed 4x4 patch

// The tiling of one image: th x tw tiles of 2x2 output pixels, read from a zero-padded
// copy of the image of (2 th + 2) x (2 tw + 2) pixels (the last tile of an odd output
// size reads one zero row or column past the convolution's own padding).
struct Tiles {
  int64_t th, tw, Hp, Wp;
  explicit Tiles(const Conv2dGeom& g)
      : th((g.P + 1) / 2), tw((g.Q + 1) / 2), Hp(2 * th + 2), Wp(2 * tw + 2) {}
  int64_t count() const { return th * tw; }
};

// The 16 products' left operands: U[e] (K x C) packed, in `packed` (the calling thread's).
void pack_filters(const Conv2dGeom& g, const float* w, std::vector<float>& filter_buffer,
                  std::array<SgemmPackedA, kElements>& packed);

}  // namespace polyak::cpu
