// CUDA memory: the caching allocator and the host-device copies (see the
// synchronisation story in cuda_backend.h).
//
// Allocator. A request is rounded up to its size class: multiples of 512 bytes up to
// 4 KiB, then eight classes per power of two (at most 12.5% slack). Each class has a
// free list; a freed block goes back on its list at once (stream order makes that
// safe) and the next request of the class takes it. cudaMalloc runs only when the
// list is empty, which in a training loop means only during the first step: every
// later step asks for the same sizes. When cudaMalloc fails, the cached blocks are
// returned to the driver and the request is tried once more.
//
// Copies. Host data passes through a ring of pinned staging slots, so every DMA is
// from or to page-locked memory and runs asynchronously on the stream. Uploads return
// once queued; downloads wait for their DMA.
#include <algorithm>
#include <bit>
#include <cstring>
#include <stdexcept>
#include <string>

#include "engine/cuda/cuda_backend.h"

namespace polyak {

namespace {

constexpr size_t kStagingSlots = 4;
constexpr size_t kStagingSlotBytes = size_t{8} << 20;

size_t size_class(size_t bytes) {
  if (bytes <= 4096) return std::max<size_t>(512, (bytes + 511) / 512 * 512);
  const int k = std::bit_width(bytes - 1);   // 2^k >= bytes
  const size_t step = size_t{1} << (k - 3);  // eight classes between 2^(k-1) and 2^k
  return (bytes + step - 1) / step * step;
}

std::string mib(size_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

}  // namespace

void* CudaBackend::try_allocate(size_t bytes) {
  const size_t size = size_class(bytes);
  std::lock_guard lock(memory_mutex_);
  void* ptr = nullptr;
  auto it = free_blocks_.find(size);
  if (it != free_blocks_.end() && !it->second.empty()) {
    ptr = it->second.back();
    it->second.pop_back();
  } else {
    cudaError_t status = cudaMalloc(&ptr, size);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      release_cached_locked();
      status = cudaMalloc(&ptr, size);
      if (status == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return nullptr;
      }
    }
    POLYAK_CUDA(status);
    stats_.reserved += size;
    stats_.peak_reserved = std::max(stats_.peak_reserved, stats_.reserved);
    ++stats_.device_mallocs;
  }
  stats_.in_use += size;
  stats_.peak_in_use = std::max(stats_.peak_in_use, stats_.in_use);
  return ptr;
}

void* CudaBackend::allocate(size_t bytes) {
  if (void* ptr = try_allocate(bytes)) return ptr;
  const CudaMemoryStats s = memory_stats();
  throw std::runtime_error("CUDA out of memory: cannot allocate " + std::to_string(bytes) + " bytes (" +
                           mib(bytes) + ") with " + mib(s.in_use) + " in use by tensors on " + description_);
}

void CudaBackend::deallocate(void* ptr, size_t bytes) {
  if (!ptr) return;
  const size_t size = size_class(bytes);
  std::lock_guard lock(memory_mutex_);
  free_blocks_[size].push_back(ptr);
  stats_.in_use -= size;
}

void CudaBackend::release_cached_locked() {
  // Kernels queued earlier may still use a cached block: let them finish first.
  (void)cudaStreamSynchronize(stream_);
  for (auto& [size, blocks] : free_blocks_) {
    for (void* ptr : blocks) {
      (void)cudaFree(ptr);
      stats_.reserved -= size;
    }
  }
  free_blocks_.clear();
}

void CudaBackend::release_cached() {
  std::lock_guard lock(memory_mutex_);
  release_cached_locked();
}

CudaMemoryStats CudaBackend::memory_stats() const {
  std::lock_guard lock(memory_mutex_);
  return stats_;
}

void CudaBackend::reset_peak_memory() {
  std::lock_guard lock(memory_mutex_);
  stats_.peak_in_use = stats_.in_use;
  stats_.peak_reserved = stats_.reserved;
}

// ---------------------------------------------------------------- copies

CudaBackend::StagingSlot& CudaBackend::next_staging_slot() {
  if (staging_.empty()) {
    staging_.resize(kStagingSlots);
    for (StagingSlot& slot : staging_) {
      POLYAK_CUDA(cudaMallocHost(&slot.host, kStagingSlotBytes));
      POLYAK_CUDA(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
    }
  }
  StagingSlot& slot = staging_[next_slot_];
  next_slot_ = (next_slot_ + 1) % staging_.size();
  if (slot.pending) {
    slot.pending = false;
    POLYAK_CUDA(cudaEventSynchronize(slot.done));
  }
  return slot;
}

void CudaBackend::copy_from_host(void* dst, const void* host_src, size_t bytes) {
  std::lock_guard lock(staging_mutex_);
  for (size_t offset = 0; offset < bytes; offset += kStagingSlotBytes) {
    const size_t n = std::min(kStagingSlotBytes, bytes - offset);
    StagingSlot& slot = next_staging_slot();
    std::memcpy(slot.host, static_cast<const char*>(host_src) + offset, n);
    POLYAK_CUDA(cudaMemcpyAsync(static_cast<char*>(dst) + offset, slot.host, n, cudaMemcpyHostToDevice, stream_));
    POLYAK_CUDA(cudaEventRecord(slot.done, stream_));
    slot.pending = true;
  }
}

void CudaBackend::copy_to_host(void* host_dst, const void* src, size_t bytes) {
  std::lock_guard lock(staging_mutex_);
  for (size_t offset = 0; offset < bytes; offset += kStagingSlotBytes) {
    const size_t n = std::min(kStagingSlotBytes, bytes - offset);
    StagingSlot& slot = next_staging_slot();
    POLYAK_CUDA(cudaMemcpyAsync(slot.host, static_cast<const char*>(src) + offset, n, cudaMemcpyDeviceToHost, stream_));
    POLYAK_CUDA(cudaEventRecord(slot.done, stream_));
    POLYAK_CUDA(cudaEventSynchronize(slot.done));
    std::memcpy(static_cast<char*>(host_dst) + offset, slot.host, n);
  }
}

// Within the device; like the CPU table's memmove except that overlapping ranges are
// not supported (no op copies between overlapping views).
void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes && dst != src) POLYAK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::set_zero(void* dst, size_t bytes) {
  if (bytes) POLYAK_CUDA(cudaMemsetAsync(dst, 0, bytes, stream_));
}

void CudaBackend::synchronize() { POLYAK_CUDA(cudaStreamSynchronize(stream_)); }

}  // namespace polyak
