#include "engine/backend.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
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

namespace {
bool reference_requested_by_environment() {
  const char* choice = std::getenv("POLYAK_KERNELS");
  if (!choice || !*choice || std::strcmp(choice, "fast") == 0) return false;
  if (std::strcmp(choice, "reference") == 0) return true;
  throw std::invalid_argument(std::string("POLYAK_KERNELS must be 'fast' or 'reference', got '") + choice + "'");
}

std::atomic<bool>& reference_on_cpu() {
  static std::atomic<bool> on{reference_requested_by_environment()};
  return on;
}
}  // namespace

void use_reference_kernels(bool on) { reference_on_cpu() = on; }
bool using_reference_kernels() { return reference_on_cpu(); }

const Kernels& kernels(Device device) {
  if (device == Device::CPU && reference_on_cpu()) return reference_kernels();
  return backend(device).native_kernels();
}

}  // namespace polyak
