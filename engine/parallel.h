// Threading for CPU kernels: one OpenMP team sized by set_num_threads(). Our SGEMM runs
// single-threaded inside these regions. The engine does not link a BLAS: the pthread
// build of OpenBLAS starts a thread pool of its own when it is loaded, whose idle
// threads spin for a while and compete with the team for the cores (measurements:
// docs/PERFORMANCE.md, "No BLAS in the engine"). Only apps/bench/sgemm_bench links it,
// as a reference.
#pragma once

#include <atomic>
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

// Whether n items of cost_per_item each are worth forking the team of `threads` for:
// below about 32768 units of work the fork and the barrier cost more than they save.
inline bool worth_a_fork(int threads, int64_t n, int64_t cost_per_item) {
  return threads > 1 && n >= 2 && n * cost_per_item >= 32768;
}

// Calls body(begin, end) on contiguous chunks of [0, n) across the thread team; runs
// inline when the work is too small to be worth a fork.
template <class Body>
void parallel_for(int64_t n, int64_t cost_per_item, Body&& body) {
  const int threads = num_threads();
  if (!worth_a_fork(threads, n, cost_per_item)) {
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

// Shares [0, n) among the thread team in chunks of `grain` items that each thread
// claims as it finishes its last, for loops whose items cost the same but whose threads
// may not run at the same speed: on a shared machine another process or the hypervisor
// takes part of a core now and then, and with a fixed split the whole team then waits
// for the slow thread at the end of the loop. body(next) runs once per thread, so that
// what it sets up (a zeroed buffer) serves all its chunks, and next(begin, end) hands it
// the next chunk until it returns false. Which thread computes an item varies from run
// to run: each item's result must not depend on that. Runs inline, [0, n) in one chunk,
// when the work is too small to be worth a fork.
template <class Body>
void parallel_chunks(int64_t n, int64_t grain, int64_t cost_per_item, Body&& body) {
  const int threads = num_threads();
  if (!worth_a_fork(threads, n, cost_per_item)) {
    bool given = false;
    const auto once = [&given, n](int64_t& begin, int64_t& end) {
      if (given || n <= 0) return false;
      given = true, begin = 0, end = n;
      return true;
    };
    body(once);
    return;
  }
  grain = grain < 1 ? 1 : grain;
  std::atomic<int64_t> claimed{0};
#pragma omp parallel num_threads(threads)
  {
    const auto next = [&claimed, n, grain](int64_t& begin, int64_t& end) {
      begin = claimed.fetch_add(grain, std::memory_order_relaxed);
      if (begin >= n) return false;
      end = begin + grain < n ? begin + grain : n;
      return true;
    };
    std::decay_t<Body> local = body;  // (see parallel_for)
    local(next);
  }
}

}  // namespace polyak
