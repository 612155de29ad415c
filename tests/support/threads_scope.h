// Sets the CPU thread count for a scope and restores the previous one on leaving it,
// so that a test that runs on 1, 2 or 3 threads leaves the next test as it found it.
#pragma once

#include "engine/parallel.h"

namespace polyak::testing {

class ThreadsScope {
 public:
  explicit ThreadsScope(int threads) : saved_(num_threads()) { set_num_threads(threads); }
  ~ThreadsScope() { set_num_threads(saved_); }
  ThreadsScope(const ThreadsScope&) = delete;
  ThreadsScope& operator=(const ThreadsScope&) = delete;

 private:
  int saved_;
};

}  // namespace polyak::testing
