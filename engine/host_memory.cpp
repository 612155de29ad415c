#include "engine/host_memory.h"

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

#include "engine/cpu/cpu_backend.h"

namespace polyak {

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// The second field of /proc/self/statm: resident pages. 0 where it cannot be read.
double resident_bytes() {
  std::FILE* statm = std::fopen("/proc/self/statm", "r");
  if (!statm) return 0;
  unsigned long long total_pages = 0, resident_pages = 0;
  const bool read = std::fscanf(statm, "%llu %llu", &total_pages, &resident_pages) == 2;
  std::fclose(statm);
  return read ? static_cast<double>(resident_pages) * static_cast<double>(::sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace

HostMemory host_memory() {
  HostMemory m;
  m.rss_mib = resident_bytes() / kMiB;
  rusage usage{};
  if (::getrusage(RUSAGE_SELF, &usage) == 0) m.peak_rss_mib = static_cast<double>(usage.ru_maxrss) * 1024.0 / kMiB;
  const struct mallinfo2 heap = ::mallinfo2();
  m.malloc_mib = static_cast<double>(heap.uordblks + heap.hblkhd) / kMiB;
  const auto& cpu = static_cast<const CpuBackend&>(backend(Device::CPU));
  m.tensor_mib = static_cast<double>(cpu.arena().in_use_bytes()) / kMiB;
  return m;
}

}  // namespace polyak
