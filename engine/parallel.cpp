#include "engine/parallel.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>

extern "C" void openblas_set_num_threads(int num_threads);

namespace polyak {

namespace {
int initial_threads() {
  if (const char* env = std::getenv("POLYAK_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

int& thread_setting() {
  static int threads = [] {
    const int n = initial_threads();
    openblas_set_num_threads(1);
    return n;
  }();
  return threads;
}
}  // namespace

int num_threads() { return thread_setting(); }

void set_num_threads(int threads) {
  thread_setting() = std::max(1, threads);
  openblas_set_num_threads(1);
}

int omp_team_size() { return omp_get_num_threads(); }
int omp_thread_id() { return omp_get_thread_num(); }

}  // namespace polyak
