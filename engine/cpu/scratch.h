// Scratch memory for CPU kernels: a vector (usually thread_local) that grows to the
// largest request and stays, so that a training step reuses the same pages instead of
// faulting in fresh memory on every call.
#pragma once

#include <cstdint>
#include <vector>

namespace polyak::cpu {

// At least n elements of buffer; what they hold is unspecified.
template <class T>
T* scratch(std::vector<T>& buffer, int64_t n) {
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(static_cast<size_t>(n));
  return buffer.data();
}

}  // namespace polyak::cpu
