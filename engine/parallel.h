// Threading for CPU kernels: one OpenMP team sized by set_num_threads(). Our SGEMM runs
// single-threaded inside these regions, and OpenBLAS (linked, used only as a reference
// by apps/bench/sgemm_bench) is kept single-threaded, so no second thread pool ever
// competes for the cores.
#pragma once

#include <cstdint>
#include <type_traits>

namespace polyak {

// Defaults to POLYAK_THREADS, else the number of cores.
int num_threads();
void set_num_threads(int threads);

// The size of the current team and this thread's place in it (thin wrappers, so that
// headers need not include <omp.h>).
int omp_team_size();
int omp_thread_id();

// Calls body(begin, end) on contiguous chunks of [0, n) across the thread team; runs
// inline when the work (n * cost_per_item) is too small to be worth a fork.
template <class Body>
void parallel_for(int64_t n, int64_t cost_per_item, Body&& body) {
  const int threads = num_threads();
  if (threads <= 1 || n < 2 || n * cost_per_item < 32768) {
    if (n > 0) body(int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t team = omp_team_size();
    const int64_t id = omp_thread_id();
    const int64_t begin = n * id / team, end = n * (id + 1) / team;
    // Each thread calls its own copy of the body. The region reaches `body` through a
    // pointer, so for all the compiler knows a store through the kernel's output could
    // change the body's captured pointers: it would reload them on every element and
    // give up vectorising. A copy whose address never escapes cannot be aliased.
    std::decay_t<Body> local = body;
    if (begin < end) local(begin, end);
  }
}

}  // namespace polyak
