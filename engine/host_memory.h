// How much memory this process holds, for logs that must show whether it grows: the
// resident set (what the system counts), its high-water mark, and the live heap, which
// is what the program still has allocated: malloc's blocks in use plus the tensors in
// the CPU arena (engine/cpu/host_arena.h). A leak shows in the live heap; the resident
// set also holds freed memory that is kept for reuse.
#pragma once

namespace polyak {

struct HostMemory {
  double rss_mib = 0;        // resident set now (/proc/self/statm)
  double peak_rss_mib = 0;   // the most ever resident (getrusage)
  double malloc_mib = 0;     // malloc's blocks in use, small and mapped (mallinfo2)
  double tensor_mib = 0;     // CPU tensors alive, as the arena rounds them
  double live_heap_mib() const { return malloc_mib + tensor_mib; }
};

HostMemory host_memory();

}  // namespace polyak
