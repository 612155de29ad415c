// CPU memory: tensors' blocks from one arena (engine/cpu/host_arena.h), and copies.
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

namespace {
// Address space for every tensor the process will hold: twice the physical memory, so
// that fragmentation never runs the range out before the memory itself runs out. Only
// the part ever used is backed by memory (engine/cpu/host_arena.h).
size_t arena_reserve() {
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
  const size_t physical = pages > 0 && page_size > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page_size)
                                                     : size_t{16} << 30;
  return 2 * physical;
}
}  // namespace

CpuBackend& cpu_backend() {
  static CpuBackend* instance = new CpuBackend();  // never destroyed: tensors may outlive static destruction
  return *instance;
}

CpuBackend::CpuBackend() : arena_(arena_reserve()) {}

void* CpuBackend::allocate(size_t bytes) { return arena_.allocate(bytes); }

void CpuBackend::deallocate(void* ptr, size_t) {
  if (ptr) arena_.deallocate(ptr);
}

void CpuBackend::copy_from_host(void* dst, const void* host_src, size_t bytes) { copy(dst, host_src, bytes); }
void CpuBackend::copy_to_host(void* host_dst, const void* src, size_t bytes) { copy(host_dst, src, bytes); }

namespace {

// Byte ranges of a few megabytes (activations, their gradients) are shared among the
// threads in pieces of kPiece bytes: one core's stores cannot fill or copy them at the
// memory's bandwidth.
constexpr int64_t kPiece = 64 * 1024;

template <class Body>
void in_pieces(size_t bytes, Body&& body) {
  const auto n = static_cast<int64_t>(bytes);
  parallel_for((n + kPiece - 1) / kPiece, kPiece, [n, &body](int64_t begin, int64_t end) {
    body(static_cast<size_t>(begin * kPiece), static_cast<size_t>(std::min(n, end * kPiece) - begin * kPiece));
  });
}

}  // namespace

void CpuBackend::copy(void* dst, const void* src, size_t bytes) {
  if (!bytes || dst == src) return;
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  if (d + bytes <= s || s + bytes <= d) {  // disjoint: any split is safe
    in_pieces(bytes, [d, s](size_t at, size_t n) { std::memcpy(d + at, s + at, n); });
  } else {
    std::memmove(dst, src, bytes);
  }
}

void CpuBackend::set_zero(void* dst, size_t bytes) {
  auto* d = static_cast<char*>(dst);
  in_pieces(bytes, [d](size_t at, size_t n) { std::memset(d + at, 0, n); });
}

}  // namespace polyak
