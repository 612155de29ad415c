#include "engine/parallel.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>

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
  static int threads = initial_threads();
  return threads;
}
}  // namespace

int num_threads() { return thread_setting(); }

void set_num_threads(int threads) { thread_setting() = std::max(1, threads); }

int omp_team_size() { return omp_get_num_threads(); }
int omp_thread_id() { return omp_get_thread_num(); }

}  // namespace polyak
