// The kernel checks of test_kernels.cpp's table, one file per family
// (kernel_checks_*.cpp): each runs a table's kernels on random data over shapes with
// the edge cases and compares with the reference kernels (engine/ref).
#pragma once

#include "engine/backend.h"
#include "engine/rng.h"
#include "engine/tensor.h"

namespace polyak::kernel_checks {

// Random host data (the reference's input) and its copy on the device under test.
inline Tensor random_host(const Shape& shape, Rng& rng, float low = -1.0f, float high = 1.0f) {
  return Tensor::uniform(shape, low, high, rng);
}
inline const float* in(const Tensor& t) { return t.data<float>(); }
inline float* out(Tensor& t) { return t.data<float>(); }
inline Tensor empty_on(const Shape& shape, Device device) { return Tensor::empty(shape, DType::F32, device); }
inline Tensor back(const Tensor& t) { return t.to(Device::CPU); }
// A copy of host data on the device under test that its kernel may write (to(CPU) of a
// CPU tensor is the tensor itself, not a copy).
inline Tensor copy_on(const Tensor& host, Device d) { return d == Device::CPU ? host.clone() : host.to(d); }
// y + residual, then ReLU, on the host: the reference of a fused epilogue.
void apply_epilogue(Tensor& y, const Tensor& residual, bool relu);

using Check = void (*)(const Kernels&, Device, Rng&);
// kernel_checks_elementwise.cpp
void check_fill(const Kernels& k, Device d, Rng& rng);
void check_copy_strided(const Kernels& k, Device d, Rng& rng);
void check_binary(const Kernels& k, Device d, Rng& rng);
void check_scalar_and_unary(const Kernels& k, Device d, Rng& rng);
void check_axpy_and_multi_lerp(const Kernels& k, Device d, Rng& rng);
void check_increment_counter(const Kernels& k, Device d, Rng& rng);
void check_relu(const Kernels& k, Device d, Rng& rng);
void check_gelu(const Kernels& k, Device d, Rng& rng);
void check_reduce_sum(const Kernels& k, Device d, Rng& rng);
void check_gemm(const Kernels& k, Device d, Rng& rng);
// kernel_checks_conv2d.cpp
void check_conv2d(const Kernels& k, Device d, Rng& rng);
void check_conv2d_fused(const Kernels& k, Device d, Rng& rng);
// kernel_checks_batchnorm.cpp
void check_batchnorm(const Kernels& k, Device d, Rng& rng);
void check_batchnorm_fused(const Kernels& k, Device d, Rng& rng);
// kernel_checks_other.cpp
void check_pool(const Kernels& k, Device d, Rng& rng);
void check_loss(const Kernels& k, Device d, Rng& rng);
void check_sgd_step(const Kernels& k, Device d, Rng& rng);
void check_dropout(const Kernels& k, Device d, Rng& rng);

}  // namespace polyak::kernel_checks
