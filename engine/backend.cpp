#include "engine/backend.h"

#include <stdexcept>
#include <string>

#include "engine/cpu/cpu_backend.h"

namespace polyak {

Layout make_layout(const Shape& shape, const Shape& strides) {
  if (shape.size() > kMaxDims)
    throw std::invalid_argument("tensors have at most " + std::to_string(kMaxDims) + " dims, got " + shape_str(shape));
  Layout layout;
  layout.ndim = static_cast<int>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    layout.shape[i] = shape[i];
    layout.strides[i] = strides[i];
  }
  return layout;
}

Layout contiguous_layout(const Shape& shape) { return make_layout(shape, contiguous_strides(shape)); }

// Defined by the CUDA table when it is compiled in (engine/cuda/), else by
// engine/cuda_absent.cpp, which reports that this build has no GPU support.
Backend* cuda_backend();

Backend& backend(Device device) {
  if (device == Device::CPU) return cpu_backend();
  if (Backend* cuda = cuda_backend()) return *cuda;
  throw std::runtime_error("device 'cuda' is not available: this build has no CUDA support or no GPU is present");
}

bool device_available(Device device) { return device == Device::CPU || cuda_backend() != nullptr; }

}  // namespace polyak
