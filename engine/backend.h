// Backend: the per-device kernel table.
//
// An op (engine/ops/*.cpp) checks shapes, allocates its result and wires autograd; the
// arithmetic is done by `backend(device).kernel(...)`. The CPU table (engine/cpu/) is
// our own SGEMM and loops; the CUDA table (engine/cuda/) is cuBLAS, cuDNN and our own
// kernels. Kernels take raw pointers to contiguous data on their device unless a
// layout says otherwise, never allocate tensors, and write their outputs in full
// (no accumulation) unless the name says so. A new op adds its kernels here, to every
// table, and a CPU-vs-device parity test.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/tensor.h"

namespace polyak {

constexpr int kMaxDims = 8;

// Shape and element strides of a strided view, for kernels that read non-contiguous data.
struct Layout {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
};
Layout make_layout(const Shape& shape, const Shape& strides);
Layout contiguous_layout(const Shape& shape);

// out[i] = a[i] (op) b[i] over `shape`; a and b are read through their own strides,
// where a stride of 0 broadcasts. The output is contiguous.
struct BroadcastGeom {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t a_strides[kMaxDims] = {};
  int64_t b_strides[kMaxDims] = {};
};

// Sum of a contiguous input over the dims flagged in `reduce`; the output is the
// contiguous tensor of the input's shape with those dims set to 1.
struct ReduceGeom {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  bool reduce[kMaxDims] = {};
};

// NCHW input x (N,C,H,W), weight w (K,C,R,S), output y (N,K,P,Q).
struct Conv2dGeom {
  int64_t N, C, H, W;
  int64_t K, R, S;
  int64_t stride_h, stride_w, pad_h, pad_w;
  int64_t P, Q;
};

// NCHW input (N,C,H,W), window kh x kw, output (N,C,P,Q).
struct Pool2dGeom {
  int64_t N, C, H, W;
  int64_t kh, kw, stride_h, stride_w, pad_h, pad_w;
  int64_t P, Q;
};

// Per-channel statistics of an (N, C, HW) tensor (HW = 1 for BatchNorm1d-style input).
struct BatchNormGeom {
  int64_t N, C, HW;
};

// The moments of each plane of HW values of an (N, C, HW) tensor, kPlaneMoments floats
// per plane at (n * C + c) * kPlaneMoments: the plane's mean as the sum of two floats
// (a value and its rounding error, so that it keeps a double's precision), then the
// sum of squared deviations from it. A convolution can compute them as it writes its
// output (conv2d_forward_moments), and a training BatchNorm that follows combine them
// into its batch statistics instead of a pass over its input.
constexpr int64_t kPlaneMoments = 3;

// What a fused op does to its result r before writing it: y = act(r + residual). The
// tail of a residual block (or of a conv-BN-ReLU with no residual) in the same pass over
// memory as the op's own output, instead of two more passes (add, then ReLU).
struct Epilogue {
  const float* residual = nullptr;  // shaped as the output; null: none
  bool relu = false;
};

// One SGD update (torch.optim.SGD semantics; see engine/optim/sgd.h).
struct SgdHyper {
  float lr, momentum, dampening, weight_decay;
  bool nesterov;
  bool first_step;  // the momentum buffer is initialised to the first direction
};

// Several arrays each moved towards one source array in one pass that reads the source
// once: for every target k and element i,
//   target[k][i] = kept[k] * target[k][i] + (1 - kept[k]) * source[i]
// (PyTorch's torch._foreach_lerp_(targets, source, 1 - kept), written in this form so
// that kept = 1 leaves a target bit for bit as it is).
constexpr int kMaxLerpTargets = 8;
struct MultiLerp {
  int count = 0;
  float kept[kMaxLerpTargets] = {};
  float* target[kMaxLerpTargets] = {};
};

enum class BinaryOp : uint8_t { Add, Sub, Mul, Div };
enum class ScalarOp : uint8_t { Add, Mul, RSub, RDiv, Pow };  // x+s, x*s, s-x, s/x, x^s
enum class UnaryOp : uint8_t { Neg, Exp, Log, Sqrt };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;

  // ---- memory ----
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* ptr, size_t bytes) = 0;
  virtual void copy_from_host(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // within this device
  virtual void set_zero(void* dst, size_t bytes) = 0;
  virtual void synchronize() = 0;

  // ---- elementwise (engine/cpu/elementwise.cpp) ----
  virtual void fill(float* y, int64_t n, float value) = 0;
  // Copies elements of `elem_size` bytes between two strided views of the same shape
  // (dst's layout gives the shape). A source stride of 0 repeats (broadcasts).
  virtual void copy_strided(void* dst, const Layout& dst_layout, const void* src, const Layout& src_layout,
                            size_t elem_size) = 0;
  virtual void binary(BinaryOp op, const BroadcastGeom& geom, const float* a, const float* b, float* y) = 0;
  virtual void scalar(ScalarOp op, int64_t n, const float* x, float s, float* y) = 0;
  virtual void unary(UnaryOp op, int64_t n, const float* x, float* y) = 0;
  virtual void axpy(int64_t n, float alpha, const float* x, float* y) = 0;  // y += alpha * x
  virtual void multi_lerp(const MultiLerp& m, int64_t n, const float* source) = 0;
  // *counter += 1 where the counter lives (BN's num_batches_tracked), so that a step
  // never waits for the device just to count.
  virtual void increment_counter(int64_t* counter) = 0;

  // ---- reductions (engine/cpu/reduce.cpp) ----
  virtual void reduce_sum(const ReduceGeom& geom, const float* x, float* y) = 0;

  // ---- linear algebra (engine/cpu/gemm.cpp) ----
  // Row-major C = alpha * op(A) * op(B) + beta * C, op(A): M x K, op(B): K x N.
  virtual void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                    const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                    float* C, int64_t ldc) = 0;

  // ---- relu (engine/cpu/relu.cpp) ----
  virtual void relu_forward(int64_t n, const float* x, float* y) = 0;
  virtual void relu_backward(int64_t n, const float* y, const float* dy, float* dx) = 0;  // dx = dy * (y > 0)

  // ---- conv2d (engine/cpu/conv2d.cpp) ----
  virtual void conv2d_forward(const Conv2dGeom& g, const float* x, const float* w,
                              const float* bias /*nullable*/, const Epilogue& epilogue, float* y) = 0;
  virtual void conv2d_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx) = 0;
  // The data gradient written over dy (same shape as dx: stride 1, C = K, P = H, Q = W)
  // where this backend's kernel for g reads each part of dy before it writes that part
  // of dx; false, dy untouched, where it cannot.
  virtual bool conv2d_backward_data_in_place(const Conv2dGeom& /*g*/, float* /*dy_then_dx*/, const float* /*w*/) {
    return false;
  }
  // dx += the data gradient, added as the kernel writes dx, where this backend's kernel
  // for g can (autograd then sums a second gradient of x without a pass of its own);
  // false, with dx untouched, where it cannot.
  virtual bool conv2d_backward_data_add(const Conv2dGeom& /*g*/, const float* /*dy*/, const float* /*w*/,
                                        float* /*dx*/) {
    return false;
  }
  // conv2d_forward without an epilogue that also writes the kPlaneMoments of each plane
  // of y (N x K planes of P*Q), computed as it writes the plane, where this backend's
  // kernel for g can; false, nothing written, where it cannot.
  virtual bool conv2d_forward_moments(const Conv2dGeom& /*g*/, const float* /*x*/, const float* /*w*/,
                                      const float* /*bias*/, float* /*y*/, float* /*plane_moments*/) {
    return false;
  }
  virtual void conv2d_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw,
                                      float* dbias /*nullable*/) = 0;

  // ---- batchnorm (engine/cpu/batchnorm.cpp) ----
  // Training: normalise with the batch statistics, save mean and 1/sqrt(var + eps)
  // (biased var) for backward, and when running stats are given move them towards
  // the batch statistics: r = (1 - f) r + f * stat, with the unbiased variance.
  // plane_moments, when given, are x's (kPlaneMoments), which the backend may combine
  // into the statistics instead of reading x for them.
  virtual void batchnorm_forward_train(const BatchNormGeom& g, const float* x, const float* plane_moments,
                                       const float* gamma, const float* beta, float eps, float factor,
                                       float* running_mean, float* running_var, const Epilogue& epilogue, float* y,
                                       float* save_mean, float* save_invstd) = 0;
  virtual void batchnorm_forward_eval(const BatchNormGeom& g, const float* x, const float* gamma,
                                      const float* beta, const float* running_mean,
                                      const float* running_var, float eps, const Epilogue& epilogue,
                                      float* y) = 0;
  // Backward of the training forward, given the same gamma, beta and epilogue. After a
  // fused ReLU the incoming gradient is masked, g = dy where the output y > 0, else 0,
  // with y read from relu_output when given, else recomputed from x (possible when the
  // forward added no residual: y > 0 exactly where scale * x + shift > 0 with the
  // forward's per-channel coefficients). dresidual, when given, receives g (the
  // gradient of the residual). dgamma and dbeta may be null (no affine parameters or
  // no gradient wanted).
  virtual void batchnorm_backward(const BatchNormGeom& g, const float* x, const float* dy, const float* gamma,
                                  const float* beta, const float* save_mean, const float* save_invstd, bool relu,
                                  const float* relu_output, float* dx, float* dresidual, float* dgamma,
                                  float* dbeta) = 0;

  // ---- pooling (engine/cpu/pool.cpp) ----
  virtual void max_pool2d_forward(const Pool2dGeom& g, const float* x, float* y, int32_t* argmax) = 0;
  virtual void max_pool2d_backward(const Pool2dGeom& g, const float* dy, const int32_t* argmax, float* dx) = 0;
  // Padding counts towards the divisor (PyTorch's count_include_pad=True).
  virtual void avg_pool2d_forward(const Pool2dGeom& g, const float* x, float* y) = 0;
  virtual void avg_pool2d_backward(const Pool2dGeom& g, const float* dy, float* dx) = 0;

  // ---- softmax and loss (engine/cpu/loss.cpp) ----
  virtual void log_softmax_forward(int64_t rows, int64_t cols, const float* x, float* y) = 0;
  virtual void log_softmax_backward(int64_t rows, int64_t cols, const float* y, const float* dy, float* dx) = 0;
  // Mean over rows of the cross-entropy between softmax(logits) and the target
  // (1 - smoothing) * onehot(label) + smoothing / cols. Writes log-probabilities for
  // backward and the loss to loss[0]. `dloss` is the upstream gradient, on the device.
  virtual void cross_entropy_forward(int64_t rows, int64_t cols, const float* logits, const int64_t* labels,
                                     float smoothing, float* log_probs, float* loss) = 0;
  virtual void cross_entropy_backward(int64_t rows, int64_t cols, const float* log_probs,
                                      const int64_t* labels, float smoothing, const float* dloss,
                                      float* dlogits) = 0;

  // ---- optimiser (engine/cpu/optim.cpp) ----
  // One fused pass over flat parameter, gradient and momentum arenas.
  virtual void sgd_step(const SgdHyper& h, int64_t n, float* param, const float* grad, float* momentum_buffer) = 0;

  // ---- dropout (engine/cpu/dropout.cpp) ----
  // Element i is kept with probability 1 - p, decided by Philox word i of the stream
  // that starts at block `first_block` under key `seed`, so every device drops the
  // same elements. keep[i] is 1 or 0; y = x * keep / (1 - p).
  virtual void dropout_forward(int64_t n, const float* x, float p, uint64_t seed, uint64_t first_block,
                               float* y, uint8_t* keep) = 0;
  virtual void dropout_backward(int64_t n, const float* dy, const uint8_t* keep, float p, float* dx) = 0;
};

// The table for a device. Throws if the device was not compiled in or is not present.
Backend& backend(Device device);
bool device_available(Device device);

}  // namespace polyak
