// Backend: a device's memory. Its arithmetic is the kernel table (engine/kernels.h).
//
// Tensors allocate, copy and free through backend(device); ops compute through
// kernels(device). The CPU's memory is a host arena (engine/cpu/memory.cpp), the
// GPU's a caching allocator on one stream (engine/cuda/memory.cpp).
#pragma once

#include <cstddef>

#include "engine/kernels.h"
#include "engine/tensor.h"

namespace polyak {

Layout make_layout(const Shape& shape, const Shape& strides);
Layout contiguous_layout(const Shape& shape);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  // The device's own kernel table (kernels(device) may substitute the reference).
  virtual const Kernels& native_kernels() const = 0;

  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* ptr, size_t bytes) = 0;
  virtual void copy_from_host(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // within this device
  virtual void set_zero(void* dst, size_t bytes) = 0;
  virtual void synchronize() = 0;
};

// The backend of a device. Throws if the device was not compiled in or is not present.
Backend& backend(Device device);
bool device_available(Device device);

}  // namespace polyak
