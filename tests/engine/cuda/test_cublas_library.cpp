// cuBLAS is opened when the CUDA backend first needs it (engine/cuda/cublas_library.h),
// not linked: a process that computes on the CPU never maps it. Built with CUDA only;
// runs on machines without a GPU too (the library loads and answers without one).
#include <doctest/doctest.h>

#include <fstream>
#include <iterator>
#include <string>

#include "engine/backend.h"
#include "engine/cuda/cublas_library.h"

namespace {

bool mapped(const std::string& library) {
  std::ifstream maps("/proc/self/maps");
  const std::string all((std::istreambuf_iterator<char>(maps)), std::istreambuf_iterator<char>());
  return all.find(library) != std::string::npos;
}

}  // namespace

TEST_CASE("cuBLAS: loaded on first use, every entry point found") {
  // Without a GPU nothing has asked for cuBLAS yet: the binary must not have brought it.
  if (!polyak::device_available(polyak::Device::CUDA)) CHECK_FALSE(mapped("libcublas"));
  const polyak::CublasLibrary& library = polyak::cublas_library();
  CHECK(mapped("libcublas"));
  // (compared as bools: doctest would print a function pointer through const void*)
  CHECK(static_cast<bool>(library.create));
  CHECK(static_cast<bool>(library.destroy));
  CHECK(static_cast<bool>(library.set_stream));
  CHECK(static_cast<bool>(library.set_workspace));
  CHECK(static_cast<bool>(library.set_pointer_mode));
  CHECK(static_cast<bool>(library.gemm_ex));
  CHECK(static_cast<bool>(library.gemm_strided_batched_ex));
  REQUIRE(static_cast<bool>(library.status_string));
  // A call through the table answers: the statuses have their own, non-empty names.
  const std::string success = library.status_string(CUBLAS_STATUS_SUCCESS);
  const std::string not_initialized = library.status_string(CUBLAS_STATUS_NOT_INITIALIZED);
  CHECK_FALSE(success.empty());
  CHECK_FALSE(not_initialized.empty());
  CHECK(success != not_initialized);
  CHECK(&polyak::cublas_library() == &library);  // loaded once
}
