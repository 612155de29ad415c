// CPU memory: 64-byte aligned blocks (one cache line, and the width of an AVX-512
// register) recycled through a size-keyed cache.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "engine/cpu/cpu_backend.h"

namespace polyak {

namespace {
constexpr size_t kAlignment = 64;
size_t rounded(size_t bytes) { return (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment; }
}  // namespace

CpuBackend& cpu_backend() {
  static CpuBackend* instance = new CpuBackend();  // never destroyed: tensors may outlive static destruction
  return *instance;
}

CpuBackend::~CpuBackend() { release_cached(); }

void* CpuBackend::allocate(size_t bytes) {
  const size_t size = rounded(bytes);
  std::lock_guard lock(cache_mutex_);
  auto it = cache_.lower_bound(size);
  if (it != cache_.end() && it->first / 2 <= size) {
    void* ptr = it->second.back();
    cached_bytes_ -= it->first;
    it->second.pop_back();
    if (it->second.empty()) cache_.erase(it);
    return ptr;
  }
  void* ptr = std::aligned_alloc(kAlignment, size);
  if (!ptr) throw std::bad_alloc();
  capacity_.emplace(ptr, size);
  return ptr;
}

void CpuBackend::deallocate(void* ptr, size_t) {
  if (!ptr) return;
  std::lock_guard lock(cache_mutex_);
  const size_t capacity = capacity_.at(ptr);
  cache_[capacity].push_back(ptr);
  cached_bytes_ += capacity;
}

void CpuBackend::release_cached() {
  std::lock_guard lock(cache_mutex_);
  for (auto& [capacity, blocks] : cache_)
    for (void* ptr : blocks) {
      capacity_.erase(ptr);
      std::free(ptr);
    }
  cache_.clear();
  cached_bytes_ = 0;
}

size_t CpuBackend::cached_bytes() const {
  std::lock_guard lock(cache_mutex_);
  return cached_bytes_;
}

void CpuBackend::copy_from_host(void* dst, const void* host_src, size_t bytes) { copy(dst, host_src, bytes); }
void CpuBackend::copy_to_host(void* host_dst, const void* src, size_t bytes) { copy(host_dst, src, bytes); }

void CpuBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes && dst != src) std::memmove(dst, src, bytes);
}

void CpuBackend::set_zero(void* dst, size_t bytes) {
  if (bytes) std::memset(dst, 0, bytes);
}

}  // namespace polyak
