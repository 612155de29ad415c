// The CPU kernel table: our own SGEMM (engine/cpu/sgemm.h, AVX-512 or AVX2 chosen at
// run time) for matrix products and convolutions, our own loops (OpenMP across the
// cores) for everything else. Each family of kernels is defined in its own file here,
// named as in engine/backend.h.
#pragma once

#include "engine/backend.h"
#include "engine/cpu/host_arena.h"

namespace polyak {

class CpuBackend final : public Backend {
 public:
  CpuBackend();
  Device device() const override { return Device::CPU; }

  // memory.cpp
  void* allocate(size_t bytes) override;
  void deallocate(void* ptr, size_t bytes) override;
  void copy_from_host(void* dst, const void* host_src, size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void set_zero(void* dst, size_t bytes) override;
  void synchronize() override {}
  const HostArena& arena() const { return arena_; }

  // elementwise.cpp
  void fill(float* y, int64_t n, float value) override;
  void copy_strided(void* dst, const Layout& dst_layout, const void* src, const Layout& src_layout,
                    size_t elem_size) override;
  void binary(BinaryOp op, const BroadcastGeom& geom, const float* a, const float* b, float* y) override;
  void scalar(ScalarOp op, int64_t n, const float* x, float s, float* y) override;
  void unary(UnaryOp op, int64_t n, const float* x, float* y) override;
  void axpy(int64_t n, float alpha, const float* x, float* y) override;
  void multi_lerp(const MultiLerp& m, int64_t n, const float* source) override;
  void increment_counter(int64_t* counter) override;

  // reduce.cpp
  void reduce_sum(const ReduceGeom& geom, const float* x, float* y) override;

  // gemm.cpp
  void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
            int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) override;

  // relu.cpp
  void relu_forward(int64_t n, const float* x, float* y) override;
  void relu_backward(int64_t n, const float* y, const float* dy, float* dx) override;

  // conv2d.cpp
  void conv2d_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias,
                      const Epilogue& epilogue, float* y) override;
  void conv2d_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx) override;
  bool conv2d_forward_moments(const Conv2dGeom& g, const float* x, const float* w, const float* bias, float* y,
                              float* plane_moments) override;
  bool conv2d_backward_data_in_place(const Conv2dGeom& g, float* dy_then_dx, const float* w) override;
  bool conv2d_backward_data_add(const Conv2dGeom& g, const float* dy, const float* w, float* dx) override;
  void conv2d_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw,
                              float* dbias) override;

  // batchnorm.cpp
  void batchnorm_forward_train(const BatchNormGeom& g, const float* x, const float* plane_moments,
                               const float* gamma, const float* beta, float eps, float factor, float* running_mean,
                               float* running_var, const Epilogue& epilogue, float* y, float* save_mean,
                               float* save_invstd) override;
  void batchnorm_forward_eval(const BatchNormGeom& g, const float* x, const float* gamma, const float* beta,
                              const float* running_mean, const float* running_var, float eps,
                              const Epilogue& epilogue, float* y) override;
  void batchnorm_backward(const BatchNormGeom& g, const float* x, const float* dy, const float* gamma,
                          const float* beta, const float* save_mean, const float* save_invstd, bool relu,
                          const float* relu_output, float* dx, float* dresidual, float* dgamma,
                          float* dbeta) override;

  // pool.cpp
  void max_pool2d_forward(const Pool2dGeom& g, const float* x, float* y, int32_t* argmax) override;
  void max_pool2d_backward(const Pool2dGeom& g, const float* dy, const int32_t* argmax, float* dx) override;
  void avg_pool2d_forward(const Pool2dGeom& g, const float* x, float* y) override;
  void avg_pool2d_backward(const Pool2dGeom& g, const float* dy, float* dx) override;

  // loss.cpp
  void log_softmax_forward(int64_t rows, int64_t cols, const float* x, float* y) override;
  void log_softmax_backward(int64_t rows, int64_t cols, const float* y, const float* dy, float* dx) override;
  void cross_entropy_forward(int64_t rows, int64_t cols, const float* logits, const int64_t* labels,
                             float smoothing, float* log_probs, float* loss) override;
  void cross_entropy_backward(int64_t rows, int64_t cols, const float* log_probs, const int64_t* labels,
                              float smoothing, const float* dloss, float* dlogits) override;

  // optim.cpp
  void sgd_step(const SgdHyper& h, int64_t n, float* param, const float* grad, float* momentum_buffer) override;

  // dropout.cpp
  void dropout_forward(int64_t n, const float* x, float p, uint64_t seed, uint64_t first_block, float* y,
                       uint8_t* keep) override;
  void dropout_backward(int64_t n, const float* dy, const uint8_t* keep, float p, float* dx) override;

 private:
  HostArena arena_;
};

CpuBackend& cpu_backend();

}  // namespace polyak
