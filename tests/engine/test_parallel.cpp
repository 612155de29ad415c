// The thread team's loops: parallel_for's fixed split and parallel_chunks' claimed
// chunks each cover [0, n) exactly once, on any team size, inline below the fork
// threshold, and with chunks that do not divide n.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include "engine/parallel.h"
#include "support/threads_scope.h"

using namespace polyak;
using polyak::testing::ThreadsScope;

TEST_CASE("parallel loops: every item exactly once, on any team size") {
  for (const int threads : {1, 2, 3}) {
    ThreadsScope scope(threads);
    for (const int64_t n : {0, 1, 7, 128, 1000}) {
      for (const int64_t cost : {1, 100000}) {  // inline, and forked
        CAPTURE(threads);
        CAPTURE(n);
        CAPTURE(cost);
        std::vector<int> fixed(static_cast<size_t>(n), 0);
        parallel_for(n, cost, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) ++fixed[static_cast<size_t>(i)];
        });
        CHECK(fixed == std::vector<int>(static_cast<size_t>(n), 1));
        for (const int64_t grain : {1, 3, 64}) {
          CAPTURE(grain);
          std::vector<int> claimed(static_cast<size_t>(n), 0);
          std::atomic<int> bodies{0};
          parallel_chunks(n, grain, cost, [&](auto&& next) {
            ++bodies;
            for (int64_t begin, end; next(begin, end);)
              for (int64_t i = begin; i < end; ++i) ++claimed[static_cast<size_t>(i)];
          });
          CHECK(claimed == std::vector<int>(static_cast<size_t>(n), 1));
          CHECK(bodies >= 1);
          CHECK(bodies <= threads);
        }
      }
    }
  }
}
