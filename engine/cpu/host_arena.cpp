#include "engine/cpu/host_arena.h"

#include <sanitizer/asan_interface.h>  // the poisoning macros; no-ops without AddressSanitizer
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <new>

namespace polyak {

namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kMinReserve = size_t{64} << 20;

#if defined(__SANITIZE_ADDRESS__) || (defined(__has_feature) && __has_feature(address_sanitizer))
constexpr size_t kRedzone = HostArena::kAlignment;  // poisoned after every block
#else
constexpr size_t kRedzone = 0;
#endif

constexpr size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

void poison(uintptr_t begin, size_t size) {
  ASAN_POISON_MEMORY_REGION(reinterpret_cast<void*>(begin), size);
  (void)begin, (void)size;
}
void unpoison(uintptr_t begin, size_t size) {
  ASAN_UNPOISON_MEMORY_REGION(reinterpret_cast<void*>(begin), size);
  (void)begin, (void)size;
}

}  // namespace

HostArena::HostArena(size_t reserve_bytes) {
  size_t reserve = round_up(std::max(reserve_bytes, kMinReserve), kHugePage);
  void* mapping = MAP_FAILED;
  // One huge page more than asked, so that the range can start on a huge page.
  for (; reserve >= kMinReserve; reserve /= 2) {
    mapping = mmap(nullptr, reserve + kHugePage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapping != MAP_FAILED) break;
  }
  if (mapping == MAP_FAILED) throw std::bad_alloc();
  const auto start = reinterpret_cast<uintptr_t>(mapping);
  base_ = round_up(start, kHugePage);
  reserved_ = reserve;
  // Trim the unaligned ends, so the mapping is exactly [base_, base_ + reserved_).
  if (base_ > start) munmap(mapping, base_ - start);
  if (const uintptr_t end = start + reserve + kHugePage; end > base_ + reserved_)
    munmap(reinterpret_cast<void*>(base_ + reserved_), end - (base_ + reserved_));
  // Only advice: where transparent huge pages are off, the range works with 4 KiB pages.
  madvise(reinterpret_cast<void*>(base_), reserved_, MADV_HUGEPAGE);
  top_ = committed_ = base_;
}

HostArena::~HostArena() {
  unpoison(base_, top_ - base_);
  munmap(reinterpret_cast<void*>(base_), reserved_);
}

void HostArena::insert_free(uintptr_t begin, size_t size) {
  free_by_address_.emplace(begin, size);
  free_by_size_.emplace(size, begin);
  free_ += size;
  poison(begin, size);
}

void HostArena::erase_free(std::map<uintptr_t, size_t>::iterator it) {
  free_by_size_.erase({it->second, it->first});
  free_ -= it->second;
  free_by_address_.erase(it);
}

void HostArena::grow_to(uintptr_t new_top) {
  if (new_top > base_ + reserved_) throw std::bad_alloc();
  if (new_top > committed_) {
    const uintptr_t new_committed = std::min(round_up(new_top, kHugePage), base_ + reserved_);
    if (mprotect(reinterpret_cast<void*>(committed_), new_committed - committed_, PROT_READ | PROT_WRITE) != 0)
      throw std::bad_alloc();
    committed_ = new_committed;
  }
  top_ = new_top;
}

void* HostArena::allocate(size_t bytes) {
  const size_t requested = std::max<size_t>(bytes, 1);
  const size_t size = round_up(requested, kAlignment) + kRedzone;
  std::lock_guard lock(mutex_);
  uintptr_t begin = 0;
  if (auto best = free_by_size_.lower_bound({size, 0}); best != free_by_size_.end()) {
    // The smallest free range that holds the block; its low end is handed out.
    const auto [range, at] = *best;
    erase_free(free_by_address_.find(at));
    begin = at;
    if (range > size) insert_free(begin + size, range - size);
  } else {
    // Nothing fits: grow at the top, starting inside a free range that ends there.
    begin = top_;
    auto tail = free_by_address_.end();
    if (!free_by_address_.empty()) {
      const auto last = std::prev(free_by_address_.end());
      if (last->first + last->second == top_) tail = last, begin = last->first;
    }
    grow_to(begin + size);  // throws before anything changed
    if (tail != free_by_address_.end()) erase_free(tail);
  }
  blocks_.emplace(begin, size);
  in_use_ += size;
  unpoison(begin, requested);
  poison(begin + requested, size - requested);  // the rounding and the redzone
  return reinterpret_cast<void*>(begin);
}

void HostArena::deallocate(void* ptr) {
  auto begin = reinterpret_cast<uintptr_t>(ptr);
  std::lock_guard lock(mutex_);
  const auto block = blocks_.find(begin);
  if (block == blocks_.end()) {
    std::fprintf(stderr, "polyak: HostArena::deallocate: %p is not a block of this arena\n", ptr);
    std::abort();
  }
  size_t size = block->second;
  blocks_.erase(block);
  in_use_ -= size;
  // Merge with the free ranges right after and right before the block.
  auto next = free_by_address_.lower_bound(begin);
  if (next != free_by_address_.end() && next->first == begin + size) {
    size += next->second;
    const auto after = std::next(next);
    erase_free(next);
    next = after;
  }
  if (next != free_by_address_.begin()) {
    const auto before = std::prev(next);
    if (before->first + before->second == begin) {
      begin = before->first;
      size += before->second;
      erase_free(before);
    }
  }
  insert_free(begin, size);
}

size_t HostArena::in_use_bytes() const {
  std::lock_guard lock(mutex_);
  return in_use_;
}

size_t HostArena::free_bytes() const {
  std::lock_guard lock(mutex_);
  return free_;
}

size_t HostArena::top_bytes() const {
  std::lock_guard lock(mutex_);
  return top_ - base_;
}

}  // namespace polyak
