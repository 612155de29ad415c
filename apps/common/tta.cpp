#include "apps/common/tta.h"

#include <stdexcept>
#include <string>

#include "engine/ops.h"

namespace polyak::app {

namespace {

// PyTorch's 'reflect' index: -1 -> 1, n -> n - 2.
int64_t reflect_index(int64_t i, int64_t n) { return i < 0 ? -i : i >= n ? 2 * (n - 1) - i : i; }

// out[n][c][y][x] = in[n][c][source_row(y)][source_column(x)] on a host copy.
template <class Rows, class Columns>
Tensor remap(const Tensor& images, Rows source_row, Columns source_column) {
  if (images.dim() != 4) throw std::invalid_argument("TTA: expected images (N, C, H, W)");
  const Tensor in = images.to(Device::CPU).contiguous();
  Tensor out = Tensor::empty(in.shape(), DType::F32, Device::CPU);
  const int64_t planes = in.size(0) * in.size(1), height = in.size(2), width = in.size(3);
  const float* src = in.data<float>();
  float* dst = out.data<float>();
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t y = 0; y < height; ++y) {
      const float* row = src + (p * height + source_row(y)) * width;
      float* out_row = dst + (p * height + y) * width;
      for (int64_t x = 0; x < width; ++x) out_row[x] = row[source_column(x)];
    }
  return out.to(images.device());
}

// (f(x) + f(mirror x)) / 2.
Tensor mirror_average(nn::Module& model, const Tensor& images) {
  return mul_scalar(add(model(images), model(mirrored(images))), 0.5f);
}

}  // namespace

Tensor mirrored(const Tensor& images) {
  const int64_t width = images.size(3);
  return remap(images, [](int64_t y) { return y; }, [&](int64_t x) { return width - 1 - x; });
}

Tensor shifted_reflect(const Tensor& images, int dy, int dx) {
  const int64_t height = images.size(2), width = images.size(3);
  if (std::abs(dy) >= height || std::abs(dx) >= width)
    throw std::invalid_argument("TTA: a shift of (" + std::to_string(dy) + ", " + std::to_string(dx) +
                                ") does not fit images of " + std::to_string(height) + "x" + std::to_string(width));
  return remap(images, [&](int64_t y) { return reflect_index(y + dy, height); },
               [&](int64_t x) { return reflect_index(x + dx, width); });
}

Tensor tta_logits(nn::Module& model, const Tensor& images, int level) {
  switch (level) {
    case 0:
      return model(images);
    case 1:
      return mirror_average(model, images);
    case 2: {
      const Tensor translated = add(mirror_average(model, shifted_reflect(images, -1, -1)),
                                    mirror_average(model, shifted_reflect(images, 1, 1)));
      return add(mul_scalar(mirror_average(model, images), 0.5f), mul_scalar(translated, 0.25f));
    }
    default:
      throw std::invalid_argument("TTA level " + std::to_string(level) + ": expected 0 (none), 1 (mirror) or " +
                                  std::to_string(kMaxTtaLevel) + " (mirror and translations)");
  }
}

}  // namespace polyak::app
