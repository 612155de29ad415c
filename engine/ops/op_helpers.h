// Checks shared by the op implementations (internal to engine/ops).
#pragma once

#include <stdexcept>
#include <string>

#include "engine/backend.h"
#include "engine/tensor.h"

namespace polyak::detail {

inline void require_float(const Tensor& t, const char* op, const char* what) {
  if (!t.defined()) throw std::invalid_argument(std::string(op) + ": " + what + " is undefined");
  if (t.dtype() != DType::F32)
    throw std::invalid_argument(std::string(op) + ": " + what + " must be float32, got " + dtype_name(t.dtype()));
}

inline void require_same_device(const Tensor& a, const Tensor& b, const char* op) {
  if (b.defined() && a.device() != b.device())
    throw std::invalid_argument(std::string(op) + ": operands on different devices (" + device_name(a.device()) +
                                " and " + device_name(b.device()) + ")");
}

inline void require_dims(const Tensor& t, int64_t dims, const char* op, const char* what) {
  if (t.dim() != dims)
    throw std::invalid_argument(std::string(op) + ": " + what + " must be " + std::to_string(dims) +
                                "-D, got shape " + shape_str(t.shape()));
}

}  // namespace polyak::detail
