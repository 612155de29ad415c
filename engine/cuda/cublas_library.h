// cuBLAS, loaded when the CUDA backend first needs it instead of linked into every
// binary. libcublas pulls in libcublasLt, and merely loading the two at startup makes
// 150 MB of a process resident (relocations and static data), which every CPU-only run
// paid, on machines without a GPU too. The few entry points the backend calls are
// looked up once, by the names the header maps them to (cublasCreate is
// cublasCreate_v2), with the header's own types.
#pragma once

#include <cublas_v2.h>

namespace polyak {

// C++ sees a second cublasGemmEx (and ...StridedBatchedEx) taking the compute type as a
// cudaDataType, an inline shim of the header's: the library's own symbols take it as a
// cublasComputeType_t.
using CublasGemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                        const void*, const void*, cudaDataType, int, const void*, cudaDataType, int,
                                        const void*, void*, cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
using CublasGemmStridedBatchedEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                                      int, const void*, const void*, cudaDataType, int, long long int,
                                                      const void*, cudaDataType, int, long long int, const void*,
                                                      void*, cudaDataType, int, long long int, int,
                                                      cublasComputeType_t, cublasGemmAlgo_t);

struct CublasLibrary {
  decltype(&cublasCreate) create = nullptr;
  decltype(&cublasDestroy) destroy = nullptr;
  decltype(&cublasSetStream) set_stream = nullptr;
  decltype(&cublasSetWorkspace) set_workspace = nullptr;
  decltype(&cublasSetPointerMode) set_pointer_mode = nullptr;
  CublasGemmEx gemm_ex = nullptr;
  CublasGemmStridedBatchedEx gemm_strided_batched_ex = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
};

// The library, loaded on the first call (libcublas.so.<major> of the headers built
// against, from the loader's search path, else from the toolkit's library directory).
// Throws std::runtime_error naming the file or the entry point that is missing; a
// later call tries again.
const CublasLibrary& cublas_library();

}  // namespace polyak
