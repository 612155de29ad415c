// Checks shared by the op implementations (internal to engine/ops).
#pragma once

#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

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

// y = act(y + residual) with the plain kernels: an epilogue where the table has no
// fusion for it (the kernels are elementwise, so they may write where they read).
void apply_epilogue(const Kernels& k, const Epilogue& epilogue, int64_t n, float* y);

// Reports once per kernel that `device`'s table lacks `kernel` and the call runs on the
// host; throws std::runtime_error instead under POLYAK_STRICT_KERNELS=1 (or
// set_strict_kernels(true)), so that a GPU run never computes on the host unnoticed.
void report_host_fallback(Device device, const char* kernel);

// Makes call(table) with `table`, the table of `device`, when it has the kernel `entry`.
// A device whose table lacks it (a GPU table that has not caught up with a new op) makes
// the call on the host with the reference table instead: the tensors the call reads
// (`inputs`) and writes (`outputs`) are replaced by host copies for the call, and the
// outputs copied back into the tensors on the device after it. The call reads the
// tensors' data pointers when it runs, so it sees the host copies.
template <class Entry, class Call>
void call_kernel(const Kernels& table, Device device, Entry Kernels::*entry, const char* kernel,
                 std::initializer_list<Tensor*> inputs, std::initializer_list<Tensor*> outputs, Call&& call) {
  if (table.*entry) {
    call(table);
    return;
  }
  report_host_fallback(device, kernel);
  std::vector<Tensor> kept_inputs, device_outputs;
  for (Tensor* t : inputs) {
    kept_inputs.push_back(*t);
    *t = t->to(Device::CPU);
  }
  for (Tensor* t : outputs) {
    device_outputs.push_back(*t);
    *t = t->to(Device::CPU);
  }
  call(reference_kernels());
  size_t i = 0;
  for (Tensor* t : inputs) *t = kept_inputs[i++];
  i = 0;
  for (Tensor* t : outputs) {
    Tensor& original = device_outputs[i++];
    if (original.device() != Device::CPU) original.copy_(*t);
    *t = original;
  }
}

template <class Entry, class Call>
void call_kernel(Device device, Entry Kernels::*entry, const char* kernel, std::initializer_list<Tensor*> inputs,
                 std::initializer_list<Tensor*> outputs, Call&& call) {
  call_kernel(kernels(device), device, entry, kernel, inputs, outputs, call);
}

}  // namespace polyak::detail
