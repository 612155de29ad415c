// The fast CPU table: the reference table, with this directory's kernels in place of
// the references they make faster. A kernel not named here runs its reference (single
// threaded, summed in double): correct, and the place to start a new op.
//
// The plain conv2d and batchnorm kernels are the fused ones with nothing fused (no
// epilogue, no plane moments, no ReLU), so that one code path serves both.
#include "engine/cpu/cpu_backend.h"

namespace polyak::cpu {

namespace {

void conv2d_forward_plain(const Conv2dGeom& g, const float* x, const float* w, const float* bias, float* y) {
  conv2d_forward_epilogue(g, x, w, bias, Epilogue{}, y);
}

void batchnorm_forward_train_plain(const BatchNormGeom& g, const float* x, const float* gamma, const float* beta,
                                   float eps, float factor, float* running_mean, float* running_var, float* y,
                                   float* save_mean, float* save_invstd) {
  batchnorm_forward_train_fused(g, x, nullptr, gamma, beta, eps, factor, running_mean, running_var, Epilogue{}, y,
                                save_mean, save_invstd);
}

void batchnorm_forward_eval_plain(const BatchNormGeom& g, const float* x, const float* gamma, const float* beta,
                                  const float* running_mean, const float* running_var, float eps, float* y) {
  batchnorm_forward_eval_fused(g, x, gamma, beta, running_mean, running_var, eps, Epilogue{}, y);
}

void batchnorm_backward_plain(const BatchNormGeom& g, const float* x, const float* dy, const float* gamma,
                              const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                              float* dbeta) {
  batchnorm_backward_fused(g, x, dy, gamma, nullptr, save_mean, save_invstd, false, nullptr, dx, nullptr, dgamma,
                           dbeta);
}

Kernels make_fast_kernels() {
  Kernels k = reference_kernels();
  // elementwise.cpp, reduce.cpp, relu.cpp
  k.fill = fill;
  k.copy_strided = copy_strided;
  k.binary = binary;
  k.scalar = scalar;
  k.unary = unary;
  k.axpy = axpy;
  k.multi_lerp = multi_lerp;
  k.increment_counter = increment_counter;
  k.reduce_sum = reduce_sum;
  k.relu_forward = relu_forward;
  k.relu_backward = relu_backward;
  // gelu.cpp
  k.gelu_forward = gelu_forward;
  k.gelu_backward = gelu_backward;
  // gemm.cpp
  k.gemm = gemm;
  // conv2d.cpp
  k.conv2d_forward = conv2d_forward_plain;
  k.conv2d_backward_data = conv2d_backward_data;
  k.conv2d_backward_filter = conv2d_backward_filter;
  k.conv2d_forward_epilogue = conv2d_forward_epilogue;
  k.conv2d_forward_moments = conv2d_forward_moments;
  k.conv2d_backward_data_in_place = conv2d_backward_data_in_place;
  k.conv2d_backward_data_add = conv2d_backward_data_add;
  // batchnorm.cpp
  k.batchnorm_forward_train = batchnorm_forward_train_plain;
  k.batchnorm_forward_eval = batchnorm_forward_eval_plain;
  k.batchnorm_backward = batchnorm_backward_plain;
  k.batchnorm_forward_train_fused = batchnorm_forward_train_fused;
  k.batchnorm_forward_eval_fused = batchnorm_forward_eval_fused;
  k.batchnorm_backward_fused = batchnorm_backward_fused;
  // pool.cpp
  k.max_pool2d_forward = max_pool2d_forward;
  k.max_pool2d_backward = max_pool2d_backward;
  k.avg_pool2d_forward = avg_pool2d_forward;
  k.avg_pool2d_backward = avg_pool2d_backward;
  // loss.cpp
  k.log_softmax_forward = log_softmax_forward;
  k.log_softmax_backward = log_softmax_backward;
  k.cross_entropy_forward = cross_entropy_forward;
  k.cross_entropy_backward = cross_entropy_backward;
  // optim.cpp, dropout.cpp
  k.sgd_step = sgd_step;
  k.dropout_forward = dropout_forward;
  k.dropout_backward = dropout_backward;
  return k;
}

}  // namespace

const Kernels& fast_kernels() {
  static const Kernels table = make_fast_kernels();
  return table;
}

}  // namespace polyak::cpu
