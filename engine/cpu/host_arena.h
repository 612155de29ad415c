// Host memory for tensors: one reserved range of address space, handed out best-fit,
// with freed blocks merged with their free neighbours.
//
// Why not malloc, or a cache of freed blocks by size. A training step allocates the
// same tensors every time, and a first touch of each fresh 4 KiB page faults into the
// kernel, so freed memory must be kept and reused, not returned. But a cache keyed by
// size reuses a block only for a request of about its size: the backward pass frees the
// large activations of the first stages while it asks for gradients of other sizes, and
// such a cache held well above what a ResNet-18 step ever had in use at once
// (measurements: docs/PERFORMANCE.md, "Host memory: one best-fit arena"). Here a
// request takes the smallest free range that holds it, a freed block merges with the
// free ranges beside it, and the range grows at its top only when no free range fits
// (extending a free range that ends at the top), so the memory touched stays close to
// the most ever in use. Memory freed after training (the activations) serves what
// comes next, such as the EMA copies of the weights.
//
// The range is reserved without access (no memory is committed), made readable and
// writable as its top grows, and advised for transparent huge pages: one fault per
// 2 MiB instead of per 4 KiB, and fewer TLB misses in the kernels' strided walks.
// Under AddressSanitizer, free ranges and a redzone after every block are poisoned,
// so an overflow or a use after free is still reported.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>

namespace polyak {

class HostArena {
 public:
  static constexpr size_t kAlignment = 64;  // one cache line, the width of an AVX-512 register

  // Reserves `reserve_bytes` of address space (rounded up to 2 MiB); reserves less when
  // the system refuses that much, down to 64 MiB. Throws std::bad_alloc below that.
  explicit HostArena(size_t reserve_bytes);
  ~HostArena();
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  // A block of at least `bytes` (>= 1), kAlignment-aligned, contents unspecified.
  // Throws std::bad_alloc when the reserved range cannot hold it.
  void* allocate(size_t bytes);
  // Returns a block from allocate(); anything else is a programming error (aborts).
  void deallocate(void* ptr);

  size_t in_use_bytes() const;   // blocks handed out, as rounded and padded
  size_t free_bytes() const;     // free ranges below the top: touched memory kept for reuse
  size_t top_bytes() const;      // the range's high-water mark: memory ever touched, at most
  size_t reserved_bytes() const { return reserved_; }

 private:
  void insert_free(uintptr_t begin, size_t size);
  void erase_free(std::map<uintptr_t, size_t>::iterator it);
  void grow_to(uintptr_t new_top);

  mutable std::mutex mutex_;
  uintptr_t base_ = 0;
  size_t reserved_ = 0;
  uintptr_t top_ = 0;        // [base_, top_) has been handed out at least once
  uintptr_t committed_ = 0;  // [base_, committed_) is readable and writable
  std::map<uintptr_t, size_t> free_by_address_;    // begin -> size, for merging neighbours
  std::set<std::pair<size_t, uintptr_t>> free_by_size_;  // (size, begin), for best fit
  std::unordered_map<uintptr_t, size_t> blocks_;   // handed-out block -> its size
  size_t in_use_ = 0, free_ = 0;
};

}  // namespace polyak
