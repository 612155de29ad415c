#include "engine/cuda/cublas_library.h"

#include <dlfcn.h>

#include <stdexcept>
#include <string>
#include <type_traits>

// The name a macro expands to, as a string: POLYAK_EXPANDED_NAME(cublasCreate) is
// "cublasCreate_v2".
#define POLYAK_NAME_OF(name) #name
#define POLYAK_EXPANDED_NAME(name) POLYAK_NAME_OF(name)

namespace polyak {

// The two spelled-out entry point types pick the library's overloads (and stop the
// build if the headers change them). In decltype, naming them links nothing.
static_assert(std::is_same_v<decltype(static_cast<CublasGemmEx>(&cublasGemmEx)), CublasGemmEx>);
static_assert(std::is_same_v<decltype(static_cast<CublasGemmStridedBatchedEx>(&cublasGemmStridedBatchedEx)),
                             CublasGemmStridedBatchedEx>);

namespace {

void* open_cublas(const std::string& file) {
  if (void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL)) return handle;
  std::string error = dlerror();
#ifdef POLYAK_CUDA_LIBRARY_DIR
  if (void* handle = dlopen((std::string(POLYAK_CUDA_LIBRARY_DIR) + "/" + file).c_str(), RTLD_NOW | RTLD_LOCAL))
    return handle;
  error += "; " + std::string(dlerror());
#endif
  throw std::runtime_error("cuBLAS: cannot load " + file + ": " + error);
}

CublasLibrary load() {
  const std::string file = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
  void* const handle = open_cublas(file);  // kept open for the life of the process
  CublasLibrary library;
  const auto bind = [&](auto& entry, const char* name) {
    entry = reinterpret_cast<std::remove_reference_t<decltype(entry)>>(dlsym(handle, name));
    if (entry == nullptr) throw std::runtime_error("cuBLAS: " + file + " has no " + name);
  };
  bind(library.create, POLYAK_EXPANDED_NAME(cublasCreate));
  bind(library.destroy, POLYAK_EXPANDED_NAME(cublasDestroy));
  bind(library.set_stream, POLYAK_EXPANDED_NAME(cublasSetStream));
  bind(library.set_workspace, POLYAK_EXPANDED_NAME(cublasSetWorkspace));
  bind(library.set_pointer_mode, POLYAK_EXPANDED_NAME(cublasSetPointerMode));
  bind(library.gemm_ex, POLYAK_EXPANDED_NAME(cublasGemmEx));
  bind(library.gemm_strided_batched_ex, POLYAK_EXPANDED_NAME(cublasGemmStridedBatchedEx));
  bind(library.status_string, POLYAK_EXPANDED_NAME(cublasGetStatusString));
  return library;
}

}  // namespace

const CublasLibrary& cublas_library() {
  static const CublasLibrary library = load();
  return library;
}

}  // namespace polyak
