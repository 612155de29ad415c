// The MPI communicator (built when CMake finds MPI): MPI-3 calls only, so Open MPI and
// MPICH both serve. Every call's status is checked; MPI's default error handler aborts
// the job on a failure anyway (MPI_ERRORS_ARE_FATAL), which is what a lost rank should
// do: the launcher ends every rank and the run resumes from its last checkpoint.
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <vector>

#include "engine/distributed.h"

namespace polyak::dist {

namespace {

void check(int status, const char* call) {
  if (status == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(status, text, &length);
  throw std::runtime_error(std::string(call) + " failed: " + std::string(text, static_cast<size_t>(length)));
}

int as_count(int64_t n) {
  if (n < 0 || n > INT_MAX) throw std::length_error("an MPI message of " + std::to_string(n) + " elements (the limit is 2^31 - 1)");
  return static_cast<int>(n);
}

class MpiWorld final : public Communicator {
 public:
  MpiWorld() {
    int provided = 0;
    // The loader's thread never calls MPI: only the main thread does.
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    MPI_Comm node;
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node), "MPI_Comm_split_type");
    check(MPI_Comm_size(node, &local_size_), "MPI_Comm_size");
    check(MPI_Comm_rank(node, &local_rank_), "MPI_Comm_rank");
    MPI_Comm_free(&node);
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    MPI_Get_library_version(version, &length);
    library_.assign(version, static_cast<size_t>(length));
    // The first line up to its first comma, tabs as spaces ("MPICH Version:\t4.0.2").
    if (const size_t end = library_.find_first_of(",\n"); end != std::string::npos) library_.resize(end);
    std::replace(library_.begin(), library_.end(), '\t', ' ');
    // Finalised at normal exit, after the world's users are gone.
    std::atexit([] {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    });
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_size() const override { return local_size_; }
  int local_rank() const override { return local_rank_; }
  std::string description() const override { return library_; }

  void sum_in_rank_order(float* data, int64_t n) override {
    // Slice j of the vector is added up on rank j: everyone sends it its slice j
    // (all-to-all), rank j adds the N copies in rank order, everyone gathers the sums.
    std::vector<int> counts(static_cast<size_t>(size_)), offsets(counts.size());
    for (int r = 0; r < size_; ++r) {
      const Range slice = share(n, r, size_);
      counts[static_cast<size_t>(r)] = as_count(slice.size());
      offsets[static_cast<size_t>(r)] = as_count(slice.begin);
    }
    const int mine = counts[static_cast<size_t>(rank_)];
    // Kept between calls: a fresh buffer would be zeroed and faulted in at every step.
    std::vector<float>& received = received_;
    if (received.size() < static_cast<size_t>(mine) * static_cast<size_t>(size_))
      received.resize(static_cast<size_t>(mine) * static_cast<size_t>(size_));
    std::vector<int> received_counts(counts.size(), mine), received_offsets(counts.size());
    for (int r = 0; r < size_; ++r) received_offsets[static_cast<size_t>(r)] = r * mine;
    check(MPI_Alltoallv(data, counts.data(), offsets.data(), MPI_FLOAT, received.data(), received_counts.data(),
                        received_offsets.data(), MPI_FLOAT, MPI_COMM_WORLD),
          "MPI_Alltoallv");
    float* sum = data + offsets[static_cast<size_t>(rank_)];
    for (int i = 0; i < mine; ++i) sum[i] = received[static_cast<size_t>(i)];
    for (int r = 1; r < size_; ++r) {
      const float* part = received.data() + static_cast<size_t>(r) * static_cast<size_t>(mine);
      for (int i = 0; i < mine; ++i) sum[i] += part[i];
    }
    check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, counts.data(), offsets.data(), MPI_FLOAT,
                         MPI_COMM_WORLD),
          "MPI_Allgatherv");
  }

  std::vector<double> all_gather(const double* mine, int64_t n) override {
    std::vector<double> all(static_cast<size_t>(n) * static_cast<size_t>(size_));
    check(MPI_Allgather(mine, as_count(n), MPI_DOUBLE, all.data(), as_count(n), MPI_DOUBLE, MPI_COMM_WORLD),
          "MPI_Allgather");
    return all;
  }

  void all_gather(const float* mine, const std::vector<int64_t>& counts, float* all) override {
    std::vector<int> c(counts.size()), offsets(counts.size());
    int64_t offset = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      c[r] = as_count(counts[r]);
      offsets[r] = as_count(offset);
      offset += counts[r];
    }
    check(MPI_Allgatherv(mine, c.at(static_cast<size_t>(rank_)), MPI_FLOAT, all, c.data(), offsets.data(), MPI_FLOAT,
                         MPI_COMM_WORLD),
          "MPI_Allgatherv");
  }

  void broadcast(void* data, int64_t bytes, int root) override {
    auto* p = static_cast<char*>(data);
    for (int64_t done = 0; done < bytes; done += INT_MAX) {
      const int64_t chunk = std::min<int64_t>(bytes - done, INT_MAX);
      check(MPI_Bcast(p + done, static_cast<int>(chunk), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    }
  }

  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; should it, end this rank at least
  }

 private:
  int rank_ = 0, size_ = 1, local_size_ = 1, local_rank_ = 0;
  std::string library_;
  std::vector<float> received_;  // sum_in_rank_order's slices from every rank
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_world() { return std::make_unique<MpiWorld>(); }

}  // namespace polyak::dist
