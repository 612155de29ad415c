// The host memory arena behind CPU tensors (engine/cpu/host_arena.h): best fit, merging
// of freed neighbours, growth at the top, and a repeated step that stops growing.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <random>
#include <vector>

#include "engine/cpu/host_arena.h"

using namespace polyak;

namespace {
constexpr size_t MiB = size_t{1} << 20;
uintptr_t address(const void* p) { return reinterpret_cast<uintptr_t>(p); }

// Every byte below the top is in a block or in a free range.
void check_accounting(const HostArena& arena) { CHECK(arena.in_use_bytes() + arena.free_bytes() == arena.top_bytes()); }
}  // namespace

TEST_CASE("host arena: aligned, disjoint, writable blocks; odd sizes rounded up") {
  HostArena arena(64 * MiB);
  std::vector<void*> blocks;
  for (size_t bytes : {size_t{1}, size_t{3}, size_t{64}, size_t{65}, size_t{1000}, MiB + 7}) {
    void* p = arena.allocate(bytes);
    CHECK(address(p) % HostArena::kAlignment == 0);
    std::memset(p, 0xAB, bytes);
    blocks.push_back(p);
  }
  std::vector<uintptr_t> sorted;
  for (void* p : blocks) sorted.push_back(address(p));
  std::sort(sorted.begin(), sorted.end());
  CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
  CHECK(arena.in_use_bytes() >= 1 + 3 + 64 + 65 + 1000 + MiB + 7);
  check_accounting(arena);
  for (void* p : blocks) arena.deallocate(p);
  CHECK(arena.in_use_bytes() == 0);
  CHECK(arena.free_bytes() == arena.top_bytes());
}

TEST_CASE("host arena: a freed block merges with free neighbours on both sides") {
  HostArena arena(64 * MiB);
  void* a = arena.allocate(MiB);
  void* b = arena.allocate(MiB);
  void* c = arena.allocate(MiB);
  void* fence = arena.allocate(64);  // keeps the three off the top
  const size_t top = arena.top_bytes();
  arena.deallocate(a);
  arena.deallocate(c);
  arena.deallocate(b);  // joins a's range before it and c's after it
  void* merged = arena.allocate(3 * MiB);
  CHECK(merged == a);
  CHECK(arena.top_bytes() == top);
  check_accounting(arena);
  arena.deallocate(merged);
  arena.deallocate(fence);
}

TEST_CASE("host arena: a request takes the smallest free range that holds it") {
  HostArena arena(64 * MiB);
  void* big = arena.allocate(2 * MiB);
  void* fence1 = arena.allocate(64);
  void* small = arena.allocate(MiB);
  void* fence2 = arena.allocate(64);
  arena.deallocate(big);
  arena.deallocate(small);
  void* p = arena.allocate(MiB - 100);  // fits both ranges; the 1 MiB one is the better fit
  CHECK(p == small);
  void* q = arena.allocate(MiB + 100);  // only the 2 MiB range holds it
  CHECK(q == big);
  check_accounting(arena);
  for (void* block : {p, q, fence1, fence2}) arena.deallocate(block);
}

TEST_CASE("host arena: growing at the top starts in a free range that ends there") {
  HostArena arena(64 * MiB);
  void* a = arena.allocate(MiB);
  void* b = arena.allocate(MiB);
  arena.deallocate(b);
  void* c = arena.allocate(3 * MiB);  // no range holds it: b's range and 2 MiB above it
  CHECK(c == b);
  CHECK(arena.top_bytes() == arena.in_use_bytes());  // no free range left below the top
  check_accounting(arena);
  arena.deallocate(a);
  arena.deallocate(c);
}

TEST_CASE("host arena: a request past the reserved range throws and leaves the arena as it was") {
  HostArena arena(64 * MiB);
  CHECK(arena.reserved_bytes() == 64 * MiB);
  void* a = arena.allocate(32 * MiB);
  CHECK_THROWS_AS(arena.allocate(40 * MiB), std::bad_alloc);
  CHECK(arena.top_bytes() == arena.in_use_bytes());
  CHECK(arena.free_bytes() == 0);
  void* b = arena.allocate(30 * MiB);  // what is left still serves
  arena.deallocate(a);
  arena.deallocate(b);
}

// A "training step": a fixed sequence of allocations and frees, activations of many
// sizes kept until a backward that frees them in reverse while it asks for gradients.
// Replayed, it must find every block in the ranges the first replay left: the top stops
// growing, and the memory it holds stays near the most ever in use at once.
TEST_CASE("host arena: a repeated step stops growing; contents of live blocks are never overlapped") {
  HostArena arena(256 * MiB);
  std::mt19937 rng(7);
  std::uniform_int_distribution<size_t> size_of(1, 2 * MiB);
  std::vector<size_t> activation_sizes(60), gradient_sizes(60);
  for (auto& s : activation_sizes) s = size_of(rng);
  for (auto& s : gradient_sizes) s = size_of(rng);

  struct Block {
    unsigned char* data;
    size_t bytes;
    unsigned char tag;
  };
  unsigned char next_tag = 1;
  const auto make = [&](size_t bytes) {
    Block b{static_cast<unsigned char*>(arena.allocate(bytes)), bytes, next_tag++};
    std::memset(b.data, b.tag, bytes);
    return b;
  };
  const auto release = [&](const Block& b) {
    CHECK(std::all_of(b.data, b.data + b.bytes, [&](unsigned char v) { return v == b.tag; }));
    arena.deallocate(b.data);
  };

  size_t most_in_use = 0;
  std::vector<size_t> tops;
  for (int step = 0; step < 6; ++step) {
    std::vector<Block> saved;
    for (size_t s : activation_sizes) saved.push_back(make(s));
    Block gradient = make(gradient_sizes[0]);
    for (size_t i = 0; i < saved.size(); ++i) {
      Block next = make(gradient_sizes[i % gradient_sizes.size()]);
      most_in_use = std::max(most_in_use, arena.in_use_bytes());
      release(gradient);
      release(saved[saved.size() - 1 - i]);
      gradient = next;
    }
    release(gradient);
    check_accounting(arena);
    CHECK(arena.in_use_bytes() == 0);
    tops.push_back(arena.top_bytes());
  }
  CHECK(tops[1] == tops.back());
  CHECK(tops.back() <= most_in_use + most_in_use / 10);
}
