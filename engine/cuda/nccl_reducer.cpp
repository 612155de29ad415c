// Sums of GPU tensors over the ranks of a job with NCCL (built when CMake finds nccl.h
// next to the CUDA toolkit). Like cuBLAS (cublas_library.h), libnccl is loaded on first
// use rather than linked: a CPU-only run, or a GPU run on one rank, never loads it.
//
// The NCCL communicator is made once per process: rank 0 asks NCCL for a unique id and
// the job's communicator (MPI) broadcasts it; every rank then joins with its rank and
// the job's size, on the GPU its backend uses. Each sum runs on a stream of its own,
// after the backend's stream has finished the backward pass that wrote the values, and
// the caller gets the values back when it is done (a synchronous all-reduce; overlapping
// it with the backward pass is future work, see README "Data-parallel training").
#include <dlfcn.h>
#include <nccl.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "engine/backend.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/distributed.h"

namespace polyak::dist {

namespace {

struct NcclLibrary {
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
};

NcclLibrary load_nccl() {
  const std::string file = "libnccl.so." + std::to_string(NCCL_MAJOR);
  void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
#ifdef POLYAK_CUDA_LIBRARY_DIR
  if (!handle) handle = dlopen((std::string(POLYAK_CUDA_LIBRARY_DIR) + "/" + file).c_str(), RTLD_NOW | RTLD_LOCAL);
#endif
  if (!handle) throw std::runtime_error("NCCL: cannot load " + file + ": " + dlerror());
  NcclLibrary library;
  const auto bind = [&](auto& entry, const char* name) {
    entry = reinterpret_cast<std::remove_reference_t<decltype(entry)>>(dlsym(handle, name));
    if (entry == nullptr) throw std::runtime_error("NCCL: " + file + " has no " + name);
  };
  bind(library.get_unique_id, "ncclGetUniqueId");
  bind(library.comm_init_rank, "ncclCommInitRank");
  bind(library.all_reduce, "ncclAllReduce");
  bind(library.error_string, "ncclGetErrorString");
  return library;
}

void nccl_check(const NcclLibrary& nccl, ncclResult_t result, const char* call) {
  if (result != ncclSuccess) throw std::runtime_error(std::string(call) + " failed: " + nccl.error_string(result));
}

// The process's NCCL communicator and its stream, joined on first use.
struct NcclWorld {
  NcclLibrary nccl;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;

  explicit NcclWorld(Communicator& job) : nccl(load_nccl()) {
    ncclUniqueId id{};
    if (job.rank() == 0) nccl_check(nccl, nccl.get_unique_id(&id), "ncclGetUniqueId");
    job.broadcast(&id, sizeof id, 0);
    (void)backend(Device::CUDA);  // the backend chose the rank's GPU (cudaSetDevice)
    nccl_check(nccl, nccl.comm_init_rank(&comm, job.size(), id, job.rank()), "ncclCommInitRank");
    POLYAK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  }
};

}  // namespace

void nccl_sum(Communicator& comm, float* device_data, int64_t n) {
  static NcclWorld world(comm);
  auto& cuda = static_cast<CudaBackend&>(backend(Device::CUDA));
  POLYAK_CUDA(cudaStreamSynchronize(cuda.stream()));
  nccl_check(world.nccl,
             world.nccl.all_reduce(device_data, device_data, static_cast<size_t>(n), ncclFloat, ncclSum, world.comm,
                                   world.stream),
             "ncclAllReduce");
  POLYAK_CUDA(cudaStreamSynchronize(world.stream));
}

}  // namespace polyak::dist
