// Copies of feature-map rows, for the convolutions that read a zero-padded image
// (shifted rows in conv2d_shifted.cpp, Winograd in winograd.cpp).
#pragma once

#include <cstdint>
#include <cstring>

namespace polyak::cpu {

// dst[0, n) = src[0, n) for the short rows of a feature map (8 to 32 floats in a
// ResNet): a call to memmove per row costs more than the copy, so whole blocks of 16,
// then of 8, go through fixed-size copies, which the compiler turns into vector moves
// (one per block where it has 64-byte vectors; measurements: docs/PERFORMANCE.md,
// "Row copies in blocks of 16").
inline void copy_row(const float* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) std::memcpy(dst + i, src + i, 16 * sizeof(float));
  for (; i + 8 <= n; i += 8) std::memcpy(dst + i, src + i, 8 * sizeof(float));
  for (; i < n; ++i) dst[i] = src[i];
}

// The image x (C, H, W) into the interior of xp (C, Hp, Wp), at row pad_h and column
// pad_w of each plane; the border is left as it is. A caller zeroes xp once and then
// copies image after image into it: they all write the same places, so the border
// stays zero and each image costs one pass over its own floats.
inline void copy_interior(int64_t C, int64_t H, int64_t W, const float* x, int64_t Hp, int64_t Wp, int64_t pad_h,
                          int64_t pad_w, float* xp) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t h = 0; h < H; ++h) copy_row(x + (c * H + h) * W, W, xp + (c * Hp + pad_h + h) * Wp + pad_w);
}

}  // namespace polyak::cpu
