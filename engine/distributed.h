// The processes of a data-parallel job, and the few collectives training needs.
//
// `mpirun -np N ./train ...` starts N processes (ranks); world() is then the MPI
// communicator of the job, and in a process started on its own a communicator of one
// rank whose collectives are no-ops. polyak never starts processes or opens sockets
// itself: MPI (Open MPI or MPICH) launches and connects the ranks, on one machine or
// several; NCCL moves GPU memory between them (engine/cuda/nccl_reducer.cpp).
//
// Determinism. An MPI_Allreduce may add the ranks' values in any order it likes (ring,
// tree, recursive halving: it depends on the implementation, the message size and the
// number of ranks), and float addition is not associative. sum_in_rank_order fixes the
// order: each rank owns a 1/N slice of the vector (a reduce-scatter done as one
// all-to-all), adds the N contributions to its slice as ((x_0 + x_1) + x_2) + ...,
// then every rank receives every slice (an all-gather). The result is the same bits on
// every rank, with any MPI, and equals what one process gets by adding N partial
// results in that order (gradient accumulation, apps/train/data_parallel.h). It moves
// 2 (N - 1) / N of the vector per rank, as a ring all-reduce does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace polyak::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The ranks of this job on this machine (a share of the cores each), and this one's
  // place among them (its GPU, when there are several).
  virtual int local_size() const = 0;
  virtual int local_rank() const = 0;
  // What carries the messages, for the console: "single process", "Open MPI v4.1.4".
  virtual std::string description() const = 0;

  // data[i] <- sum over ranks r of data_r[i], added in rank order (see above).
  virtual void sum_in_rank_order(float* data, int64_t n) = 0;
  // Every rank's `n` values, rank 0's first: n * size() values on every rank.
  virtual std::vector<double> all_gather(const double* mine, int64_t n) = 0;
  // Rank r contributes counts[r] floats; `all` (sum of counts) receives them in rank order.
  virtual void all_gather(const float* mine, const std::vector<int64_t>& counts, float* all) = 0;
  // Rank `root`'s `bytes` bytes at `data` on every rank.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // Ends every rank of the job with exit status `code` (an error on one rank must not
  // leave the others waiting in a collective forever).
  [[noreturn]] virtual void abort(int code) = 0;
};

// The job's communicator (initialised on first use; MPI only when the process was
// started by an MPI launcher, so a plain run never touches MPI).
Communicator& world();
// Whether this build can run data-parallel (found MPI at build time).
bool mpi_available();
// Whether an MPI launcher started this process: each sets its own variables (Open
// MPI's mpirun, MPICH's Hydra, PMIx launchers such as Slurm's srun). Without
// mpi_available(), each such process would be a job of its own.
bool launched_by_mpi();

// A tensor's values summed over the ranks in rank order, in place; on a GPU through
// NCCL when the build has it (NCCL's order: bit-identical to rank order for 2 ranks,
// where each sum is one addition), else through host memory.
void sum_in_rank_order(Communicator& comm, Tensor& t);
// Rank `root`'s values of `t` on every rank, in place.
void broadcast(Communicator& comm, Tensor& t, int root);
// Rank `root`'s text on every rank, in place (its length first, then its bytes).
void broadcast_string(Communicator& comm, std::string& text, int root);

// The whole vector of `n` values of which each rank r holds aligned_share(n, r, N,
// align) as `mine` (on any device): on every rank, on mine's device.
Tensor gather_shards(Communicator& comm, const Tensor& mine, int64_t n, int64_t align);

// Rank r's share [begin, end) of n items split N ways: shares differ by at most one
// item and follow rank order.
struct Range {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
Range share(int64_t n, int rank, int ranks);
// The same, with every boundary a multiple of `align` (but the last, n): slices of a
// flat arena that start on the same vector-lane boundaries for any N.
Range aligned_share(int64_t n, int rank, int ranks, int64_t align);

// Agreement after a step every rank takes on its own (reading data, setting up): when
// some rank failed, every rank learns the first failing rank's error. Call on every
// rank with code 0 for success; returns code 0 when every rank succeeded. The message
// names the rank when it is not rank 0.
struct RankError {
  int code = 0;
  std::string message;
};
RankError first_error(Communicator& comm, const RankError& mine);

}  // namespace polyak::dist
