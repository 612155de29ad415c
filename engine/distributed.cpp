#include "engine/distributed.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace polyak::dist {

// The MPI communicator (engine/distributed_mpi.cpp) and the NCCL sum
// (engine/cuda/nccl_reducer.cpp), in builds that have them.
#ifdef POLYAK_HAVE_MPI
std::unique_ptr<Communicator> make_mpi_world();
#endif
#ifdef POLYAK_HAVE_NCCL
void nccl_sum(Communicator& comm, float* device_data, int64_t n);
#endif

namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string description() const override { return "single process"; }
  void sum_in_rank_order(float*, int64_t) override {}
  std::vector<double> all_gather(const double* mine, int64_t n) override { return {mine, mine + n}; }
  void all_gather(const float* mine, const std::vector<int64_t>& counts, float* all) override {
    if (all != mine) std::memcpy(all, mine, static_cast<size_t>(counts.at(0)) * sizeof(float));
  }
  void broadcast(void*, int64_t, int) override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
};

std::unique_ptr<Communicator> make_world() {
#ifdef POLYAK_HAVE_MPI
  if (launched_by_mpi()) return make_mpi_world();
#endif
  return std::make_unique<SingleProcess>();
}

}  // namespace

bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"})
    if (std::getenv(name)) return true;
  return false;
}

Communicator& world() {
  static const std::unique_ptr<Communicator> communicator = make_world();
  return *communicator;
}

bool mpi_available() {
#ifdef POLYAK_HAVE_MPI
  return true;
#else
  return false;
#endif
}

void sum_in_rank_order(Communicator& comm, Tensor& t) {
  if (comm.size() == 1) return;
  if (t.dtype() != DType::F32 || !t.is_contiguous())
    throw std::invalid_argument("sum_in_rank_order: expected a contiguous float32 tensor");
  if (t.device() == Device::CPU) return comm.sum_in_rank_order(t.data<float>(), t.numel());
#ifdef POLYAK_HAVE_NCCL
  return nccl_sum(comm, t.data<float>(), t.numel());
#else
  Tensor host = t.to(Device::CPU);
  comm.sum_in_rank_order(host.data<float>(), host.numel());
  t.copy_(host);
#endif
}

void broadcast(Communicator& comm, Tensor& t, int root) {
  if (comm.size() == 1) return;
  if (!t.is_contiguous()) throw std::invalid_argument("broadcast: expected a contiguous tensor");
  const int64_t bytes = t.numel() * static_cast<int64_t>(dtype_size(t.dtype()));
  if (t.device() == Device::CPU) return comm.broadcast(t.raw_data(), bytes, root);
  Tensor host = t.to(Device::CPU);
  comm.broadcast(host.raw_data(), bytes, root);
  t.copy_(host);
}

Tensor gather_shards(Communicator& comm, const Tensor& mine, int64_t n, int64_t align) {
  std::vector<int64_t> counts;
  for (int r = 0; r < comm.size(); ++r) counts.push_back(aligned_share(n, r, comm.size(), align).size());
  if (mine.numel() != counts.at(static_cast<size_t>(comm.rank())))
    throw std::invalid_argument("gather_shards: this rank holds " + std::to_string(mine.numel()) + " values, its share is " +
                                std::to_string(counts[static_cast<size_t>(comm.rank())]));
  const Tensor host = mine.to(Device::CPU).contiguous();
  Tensor whole = Tensor::empty({n}, DType::F32, Device::CPU);
  comm.all_gather(host.data<float>(), counts, whole.data<float>());
  return mine.device() == Device::CPU ? whole : whole.to(mine.device());
}

void broadcast_string(Communicator& comm, std::string& text, int root) {
  int64_t length = static_cast<int64_t>(text.size());
  comm.broadcast(&length, sizeof length, root);
  text.resize(static_cast<size_t>(length));
  comm.broadcast(text.data(), length, root);
}

Range share(int64_t n, int rank, int ranks) {
  return {n * rank / ranks, n * (rank + 1) / ranks};
}

Range aligned_share(int64_t n, int rank, int ranks, int64_t align) {
  const auto boundary = [&](int r) { return r == ranks ? n : std::min(n, n * r / ranks / align * align); };
  return {boundary(rank), boundary(rank + 1)};
}

RankError first_error(Communicator& comm, const RankError& mine) {
  if (comm.size() == 1) return mine;
  const double code = mine.code;
  const std::vector<double> codes = comm.all_gather(&code, 1);
  const auto first = std::find_if(codes.begin(), codes.end(), [](double c) { return c != 0.0; });
  if (first == codes.end()) return {};
  const int root = static_cast<int>(first - codes.begin());
  std::string message = mine.message;
  broadcast_string(comm, message, root);
  return {static_cast<int>(*first), root == 0 ? message : "rank " + std::to_string(root) + ": " + message};
}

}  // namespace polyak::dist
