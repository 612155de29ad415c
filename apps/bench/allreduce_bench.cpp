// allreduce_bench: the rank-order sum of engine/distributed.h against the MPI library's
// own MPI_Allreduce, on vectors the size of ResNet-20's and ResNet-18's gradients (or
// the sizes given), best of 8 calls after one warm-up call each. A measurement for
// docs/PERFORMANCE.md, not a test:
//   mpirun -np 2 ./build/apps/allreduce_bench [floats ...]
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "engine/distributed.h"

int main(int argc, char** argv) {
  polyak::dist::Communicator& world = polyak::dist::world();  // MPI_Init under mpirun
  std::vector<long> sizes = {270000, 11200000};
  if (argc > 1) sizes.assign(argc - 1, 0);
  for (int i = 1; i < argc; ++i) sizes[static_cast<size_t>(i - 1)] = std::atol(argv[i]);
  for (const long n : sizes) {
    std::vector<float> values(static_cast<size_t>(n), 1.0f);
    for (const bool ours : {true, false}) {
      double best = 1e30;
      for (int call = 0; call < 9; ++call) {
        MPI_Barrier(MPI_COMM_WORLD);
        const auto start = std::chrono::steady_clock::now();
        if (ours)
          world.sum_in_rank_order(values.data(), n);
        else
          MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (call > 0) best = std::min(best, seconds);
      }
      if (world.rank() == 0)
        std::printf("%d ranks, %ld floats: %-16s %8.2f ms\n", world.size(), n, ours ? "rank-order sum" : "MPI_Allreduce",
                    1e3 * best);
    }
  }
  return 0;
}
