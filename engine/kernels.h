// The kernel list: every kernel of the engine, declared once.
//
// An op (engine/ops/*.cpp) checks shapes, allocates its result and wires autograd; the
// arithmetic is done by `kernels(device).name(...)`, a call through a table of function
// pointers (struct Kernels below). The list POLYAK_KERNELS is expanded into that table,
// into the declarations of the reference kernels (engine/ref/, one plain loop nest
// each: the executable specification) and of every backend's overrides:
//
//   - the reference table (reference_kernels()) holds every entry of POLYAK_KERNELS: a
//     kernel without a reference does not compile;
//   - a backend's table starts from nothing (a device) or from the reference (the fast
//     CPU table, engine/cpu/cpu_kernels.cpp) and sets the entries it makes faster;
//   - POLYAK_FUSED_KERNELS are optional fusions (null in the reference table): an op
//     uses one where the table has it, and composes plain kernels where it has not, so
//     a backend needs none of them to be correct.
//
// Kernels take raw pointers to contiguous data on their device unless a layout says
// otherwise, never allocate tensors, and write their outputs in full (no accumulation)
// unless the name says so. Adding a kernel: one X(...) line here, its reference in
// engine/ref/, a check in tests/engine/test_kernels.cpp (docs/ADDING_A_LAYER.md).
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

// X(name, function type). Parameter names are part of the documentation.
#define POLYAK_KERNELS(X)                                                                                      \
  /* ---- elementwise (ref/elementwise.cpp) ---- */                                                          \
  X(fill, void(float* y, int64_t n, float value))                                                            \
  /* Copies elements of elem_size bytes between two strided views of the same shape (dst's layout gives     \
     the shape). A source stride of 0 repeats (broadcasts). */                                               \
  X(copy_strided, void(void* dst, const Layout& dst_layout, const void* src, const Layout& src_layout,       \
                       size_t elem_size))                                                                    \
  X(binary, void(BinaryOp op, const BroadcastGeom& geom, const float* a, const float* b, float* y))         \
  X(scalar, void(ScalarOp op, int64_t n, const float* x, float s, float* y))                                \
  X(unary, void(UnaryOp op, int64_t n, const float* x, float* y))                                           \
  X(axpy, void(int64_t n, float alpha, const float* x, float* y)) /* y += alpha * x */                      \
  X(multi_lerp, void(const MultiLerp& m, int64_t n, const float* source))                                   \
  /* *counter += 1 where the counter lives (BN's num_batches_tracked), so that a step never waits for the   \
     device just to count. */                                                                                \
  X(increment_counter, void(int64_t* counter))                                                               \
  X(reduce_sum, void(const ReduceGeom& geom, const float* x, float* y))                                     \
  /* ---- activations (ref/elementwise.cpp, ref/gelu.cpp) ---- */                                            \
  X(relu_forward, void(int64_t n, const float* x, float* y))                                                 \
  X(relu_backward, void(int64_t n, const float* y, const float* dy, float* dx)) /* dx = dy * (y > 0) */     \
  X(gelu_forward, void(int64_t n, const float* x, float* y))                                                 \
  X(gelu_backward, void(int64_t n, const float* x, const float* dy, float* dx))                              \
  /* ---- linear algebra (ref/gemm.cpp) ---- */                                                              \
  /* Row-major C = alpha * op(A) * op(B) + beta * C, op(A): M x K, op(B): K x N; beta = 0 never reads C. */ \
  X(gemm, void(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,    \
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc))                \
  /* ---- conv2d (ref/conv2d.cpp) ---- */                                                                    \
  X(conv2d_forward, void(const Conv2dGeom& g, const float* x, const float* w, const float* bias /*nullable*/, \
                         float* y))                                                                          \
  X(conv2d_backward_data, void(const Conv2dGeom& g, const float* dy, const float* w, float* dx))            \
  X(conv2d_backward_filter, void(const Conv2dGeom& g, const float* x, const float* dy, float* dw,           \
                                 float* dbias /*nullable*/))                                                 \
  /* ---- batchnorm (ref/batchnorm.cpp) ---- */                                                              \
  /* Training: normalise with the batch statistics, save mean and 1/sqrt(var + eps) (biased var) for        \
     backward, and when running stats are given move them towards the batch statistics:                     \
     r = (1 - f) r + f * stat, with the unbiased variance. gamma, beta: nullable together (no affine);      \
     running stats: nullable together. */                                                                   \
  X(batchnorm_forward_train, void(const BatchNormGeom& g, const float* x, const float* gamma,               \
                                  const float* beta, float eps, float factor, float* running_mean,          \
                                  float* running_var, float* y, float* save_mean, float* save_invstd))      \
  X(batchnorm_forward_eval, void(const BatchNormGeom& g, const float* x, const float* gamma, const float* beta, \
                                 const float* running_mean, const float* running_var, float eps, float* y)) \
  /* Backward of the training forward; dgamma and dbeta may be null (no gradient wanted). */                \
  X(batchnorm_backward, void(const BatchNormGeom& g, const float* x, const float* dy, const float* gamma,    \
                             const float* save_mean, const float* save_invstd, float* dx,                   \
                             float* dgamma /*nullable*/, float* dbeta /*nullable*/))                         \
  /* ---- pooling (ref/pool.cpp); average pooling counts padding in the divisor (count_include_pad) ---- */  \
  X(max_pool2d_forward, void(const Pool2dGeom& g, const float* x, float* y, int32_t* argmax))               \
  X(max_pool2d_backward, void(const Pool2dGeom& g, const float* dy, const int32_t* argmax, float* dx))      \
  X(avg_pool2d_forward, void(const Pool2dGeom& g, const float* x, float* y))                                \
  X(avg_pool2d_backward, void(const Pool2dGeom& g, const float* dy, float* dx))                             \
  /* ---- softmax and loss (ref/loss.cpp) ---- */                                                            \
  X(log_softmax_forward, void(int64_t rows, int64_t cols, const float* x, float* y))                        \
  X(log_softmax_backward, void(int64_t rows, int64_t cols, const float* y, const float* dy, float* dx))     \
  /* Mean over rows of the cross-entropy between softmax(logits) and the target (1 - smoothing) *           \
     onehot(label) + smoothing / cols. Writes log-probabilities for backward and the loss to loss[0];       \
     a label outside [0, cols) is a std::out_of_range naming it. dloss is the upstream gradient, on the     \
     device. */                                                                                              \
  X(cross_entropy_forward, void(int64_t rows, int64_t cols, const float* logits, const int64_t* labels,     \
                                float smoothing, float* log_probs, float* loss))                             \
  X(cross_entropy_backward, void(int64_t rows, int64_t cols, const float* log_probs, const int64_t* labels, \
                                 float smoothing, const float* dloss, float* dlogits))                       \
  /* ---- optimiser (ref/optim.cpp): one pass over flat parameter, gradient and momentum arenas ---- */      \
  X(sgd_step, void(const SgdHyper& h, int64_t n, float* param, const float* grad, float* momentum_buffer))  \
  /* ---- dropout (ref/dropout.cpp) ---- */                                                                  \
  /* Element i is kept with probability 1 - p, decided by Philox word i of the stream that starts at block  \
     first_block under key seed, so every device drops the same elements. keep[i] is 1 or 0;                \
     y = x * keep / (1 - p). */                                                                              \
  X(dropout_forward, void(int64_t n, const float* x, float p, uint64_t seed, uint64_t first_block, float* y, \
                          uint8_t* keep))                                                                    \
  X(dropout_backward, void(int64_t n, const float* dy, const uint8_t* keep, float p, float* dx))

// Optional fusions: each does in one pass over memory what the plain kernels do in
// several, and is checked against that composition of the references. Null in the
// reference table; an op calls one where the table has it. Those that return bool
// may decline a geometry (false, nothing written): the op then composes.
#define POLYAK_FUSED_KERNELS(X)                                                                                 \
  /* conv2d_forward, then y = act(y + residual): the tail of a residual block in the convolution's pass. */ \
  X(conv2d_forward_epilogue, void(const Conv2dGeom& g, const float* x, const float* w,                      \
                                  const float* bias /*nullable*/, const Epilogue& epilogue, float* y))       \
  /* conv2d_forward that also writes the kPlaneMoments of each plane of y, computed as it writes it. */     \
  X(conv2d_forward_moments, bool(const Conv2dGeom& g, const float* x, const float* w,                       \
                                 const float* bias /*nullable*/, float* y, float* plane_moments))            \
  /* The data gradient written over dy (same shape as dx: stride 1, C = K, P = H, Q = W). */                \
  X(conv2d_backward_data_in_place, bool(const Conv2dGeom& g, float* dy_then_dx, const float* w))            \
  /* dx += the data gradient, as the kernel writes dx (autograd then sums a second gradient of x            \
     without a pass of its own). */                                                                          \
  X(conv2d_backward_data_add, bool(const Conv2dGeom& g, const float* dy, const float* w, float* dx))        \
  /* batchnorm_forward_train that may take its statistics from x's plane_moments (nullable) instead of a    \
     pass over x, and applies an epilogue. */                                                                \
  X(batchnorm_forward_train_fused, void(const BatchNormGeom& g, const float* x, const float* plane_moments,  \
                                        const float* gamma, const float* beta, float eps, float factor,     \
                                        float* running_mean, float* running_var, const Epilogue& epilogue,  \
                                        float* y, float* save_mean, float* save_invstd))                     \
  X(batchnorm_forward_eval_fused, void(const BatchNormGeom& g, const float* x, const float* gamma,          \
                                       const float* beta, const float* running_mean,                        \
                                       const float* running_var, float eps, const Epilogue& epilogue,       \
                                       float* y))                                                            \
  /* Backward of batchnorm_forward_train_fused. After a fused ReLU the incoming gradient is masked,         \
     g = dy where the output y > 0, with y read from relu_output when given, else recomputed from x         \
     (possible without a residual: y > 0 exactly where scale * x + shift > 0). dresidual, when given,       \
     receives g. */                                                                                          \
  X(batchnorm_backward_fused, void(const BatchNormGeom& g, const float* x, const float* dy,                 \
                                   const float* gamma, const float* beta, const float* save_mean,           \
                                   const float* save_invstd, bool relu, const float* relu_output, float* dx, \
                                   float* dresidual, float* dgamma, float* dbeta))

// The table: for each kernel `name`, a function type `name_kernel` and a pointer `name`.
struct Kernels {
#define POLYAK_KERNEL_ENTRY(name, type) \
  using name##_kernel = type;           \
  name##_kernel* name = nullptr;
  POLYAK_KERNELS(POLYAK_KERNEL_ENTRY)
  POLYAK_FUSED_KERNELS(POLYAK_KERNEL_ENTRY)
#undef POLYAK_KERNEL_ENTRY
};

// Declares, in the namespace it is expanded in, a function for each listed kernel
// (`void fill(float* y, int64_t n, float value);` and so on): how engine/ref and the
// backends declare their kernels.
#define POLYAK_DECLARE_KERNEL(name, type) Kernels::name##_kernel name;

// Every entry of POLYAK_KERNELS set to its reference, the fusions null.
const Kernels& reference_kernels();

// The table ops call on `device`: the device's own, or the reference table on the CPU
// when POLYAK_KERNELS=reference is set in the environment (or use_reference_kernels(true)
// was called). Throws if the device was not compiled in or is not present.
const Kernels& kernels(Device device);
void use_reference_kernels(bool on);
bool using_reference_kernels();

// An op whose kernel the device's table lacks runs the reference on the host, reported
// once (engine/ops/op_helpers.h: call_kernel). Strict: refuse instead, with an error
// naming the kernel. Also set by POLYAK_STRICT_KERNELS=1 in the environment.
void set_strict_kernels(bool on);

}  // namespace polyak
