// cuBLAS and cuDNN for the files that call them (gemm.cpp, conv2d.cu, device.cpp), with
// checks that throw std::runtime_error naming the call, the file and the line.
#pragma once

#include <cublas_v2.h>
#include <cudnn.h>

#include "engine/cuda/cublas_library.h"
#include "engine/cuda/cuda_backend.h"

namespace polyak {

void cublas_check(cublasStatus_t status, const char* what, const char* file, int line);
void cudnn_check(cudnnStatus_t status, const char* what, const char* file, int line);

}  // namespace polyak

#define POLYAK_CUBLAS(call) ::polyak::cublas_check((call), #call, __FILE__, __LINE__)
#define POLYAK_CUDNN(call) ::polyak::cudnn_check((call), #call, __FILE__, __LINE__)
