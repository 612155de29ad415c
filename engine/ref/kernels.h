// The reference kernels: the engine's executable specification.
//
// One plain loop nest per kernel, single-threaded, sums accumulated in double, written
// to be read next to the math in the comments. Each computes what the kernel of the same
// name in engine/backend.h computes (the table-driven test tests/engine/test_kernels.cpp
// checks every fast kernel against these), without the fusions the fast tables offer:
// a fused kernel's reference is the composition of these (e.g. conv2d_forward, then
// binary Add of the residual, then relu_forward).
//
// Argument conventions are engine/backend.h's: raw pointers to contiguous host data
// unless a layout says otherwise, outputs written in full, nullable pointers marked.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/backend.h"

namespace polyak::ref {

// ---- elementwise.cpp ----
void fill(float* y, int64_t n, float value);
void copy_strided(void* dst, const Layout& dst_layout, const void* src, const Layout& src_layout, size_t elem_size);
void binary(BinaryOp op, const BroadcastGeom& geom, const float* a, const float* b, float* y);
void scalar(ScalarOp op, int64_t n, const float* x, float s, float* y);
void unary(UnaryOp op, int64_t n, const float* x, float* y);
void axpy(int64_t n, float alpha, const float* x, float* y);
void multi_lerp(const MultiLerp& m, int64_t n, const float* source);
void increment_counter(int64_t* counter);
void relu_forward(int64_t n, const float* x, float* y);
void relu_backward(int64_t n, const float* y, const float* dy, float* dx);
void reduce_sum(const ReduceGeom& geom, const float* x, float* y);

// ---- gemm.cpp ----
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// ---- conv2d.cpp ----
void conv2d_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias /*nullable*/, float* y);
void conv2d_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx);
void conv2d_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw,
                            float* dbias /*nullable*/);

// ---- batchnorm.cpp ---- (gamma, beta: nullable together, no affine; running stats: nullable together)
void batchnorm_forward_train(const BatchNormGeom& g, const float* x, const float* gamma, const float* beta, float eps,
                             float factor, float* running_mean, float* running_var, float* y, float* save_mean,
                             float* save_invstd);
void batchnorm_forward_eval(const BatchNormGeom& g, const float* x, const float* gamma, const float* beta,
                            const float* running_mean, const float* running_var, float eps, float* y);
void batchnorm_backward(const BatchNormGeom& g, const float* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma /*nullable*/,
                        float* dbeta /*nullable*/);

// ---- pool.cpp ----
void max_pool2d_forward(const Pool2dGeom& g, const float* x, float* y, int32_t* argmax);
void max_pool2d_backward(const Pool2dGeom& g, const float* dy, const int32_t* argmax, float* dx);
void avg_pool2d_forward(const Pool2dGeom& g, const float* x, float* y);
void avg_pool2d_backward(const Pool2dGeom& g, const float* dy, float* dx);

// ---- loss.cpp ----
void log_softmax_forward(int64_t rows, int64_t cols, const float* x, float* y);
void log_softmax_backward(int64_t rows, int64_t cols, const float* y, const float* dy, float* dx);
void cross_entropy_forward(int64_t rows, int64_t cols, const float* logits, const int64_t* labels, float smoothing,
                           float* log_probs, float* loss);
void cross_entropy_backward(int64_t rows, int64_t cols, const float* log_probs, const int64_t* labels,
                            float smoothing, const float* dloss, float* dlogits);
// std::out_of_range naming the first label outside [0, cols): the host tables' check
// before a cross-entropy reads log_probs[labels[r]].
void check_labels(int64_t rows, int64_t cols, const int64_t* labels);

// ---- optim.cpp ----
void sgd_step(const SgdHyper& h, int64_t n, float* param, const float* grad, float* momentum_buffer);

// ---- dropout.cpp ----
void dropout_forward(int64_t n, const float* x, float p, uint64_t seed, uint64_t first_block, float* y,
                     uint8_t* keep);
void dropout_backward(int64_t n, const float* dy, const uint8_t* keep, float p, float* dx);

}  // namespace polyak::ref
