// The differentiable ops. Each family lives in one file under engine/ops/, forward and
// backward side by side; this header is their public face.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace polyak {

class Rng;

// ---- elementwise (ops/elementwise.cpp): numpy broadcasting between the operands ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add_scalar(const Tensor& x, float s);
Tensor mul_scalar(const Tensor& x, float s);
Tensor rsub_scalar(const Tensor& x, float s);  // s - x
Tensor rdiv_scalar(const Tensor& x, float s);  // s / x
Tensor pow_scalar(const Tensor& x, float exponent);
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Shape broadcast_shapes(const Shape& a, const Shape& b);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& x, float s) { return add_scalar(x, s); }
inline Tensor operator-(const Tensor& x, float s) { return add_scalar(x, -s); }
inline Tensor operator*(const Tensor& x, float s) { return mul_scalar(x, s); }
inline Tensor operator/(const Tensor& x, float s) { return mul_scalar(x, 1.0f / s); }
inline Tensor operator+(float s, const Tensor& x) { return add_scalar(x, s); }
inline Tensor operator-(float s, const Tensor& x) { return rsub_scalar(x, s); }
inline Tensor operator*(float s, const Tensor& x) { return mul_scalar(x, s); }
inline Tensor operator/(float s, const Tensor& x) { return rdiv_scalar(x, s); }
inline Tensor operator-(const Tensor& x) { return neg(x); }

// ---- reductions (ops/reduce.cpp) ----
Tensor sum(const Tensor& x);  // all elements, 0-dim result
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim = false);

// ---- linear algebra (ops/matmul.cpp) ----
Tensor matmul(const Tensor& a, const Tensor& b);  // (M,K) x (K,N)
// y = x W^T + b for x (N, in), weight (out, in), bias (out) or undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = {});

// ---- convolution (ops/conv2d.cpp) ----
struct Conv2dOptions {
  int64_t stride = 1;
  int64_t padding = 0;
  // Fused epilogue: y = relu(conv(x) + residual), the residual when given.
  bool relu = false;
};
// x (N,C,H,W), weight (K,C,R,S), bias (K) or undefined -> (N,K,P,Q). residual (shaped as
// the output, may be undefined) is added before the ReLU of options.relu, in the pass
// that writes the output: the end of a residual block whose BatchNorm is folded in.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = {}, Conv2dOptions options = {},
              const Tensor& residual = {});
// conv2d (without options.relu), and the moments of each plane of its output
// (N, K, kPlaneMoments; engine/kernels.h) where the backend's kernel computes them as it
// writes the output, else undefined: what a training batch_norm that follows combines
// into its statistics (its plane_moments) instead of a pass over its input.
struct ConvWithMoments {
  Tensor output, plane_moments;
};
ConvWithMoments conv2d_with_moments(const Tensor& x, const Tensor& weight, const Tensor& bias = {},
                                    Conv2dOptions options = {});

// ---- batch normalisation (ops/batchnorm.cpp) ----
struct BatchNormOptions {
  bool training = true;
  float eps = 1e-5f;
  // Weight of the new batch in the running statistics; std::nullopt means a
  // cumulative average (PyTorch's momentum=None): factor 1 / num_batches_tracked.
  std::optional<float> momentum = 0.1f;
  // Fused epilogue: y = relu(bn(x) + residual), the residual when given.
  bool relu = false;
};
// x (N,C,H,W) or (N,C). weight/bias (C) may be undefined (affine=false). In training
// mode with running stats given, they are updated in place and num_batches_tracked
// (a 0-dim int64 tensor, may be undefined) is incremented, as in PyTorch. residual
// (shaped as x, may be undefined) is added to the normalised output, before the ReLU
// when options.relu: relu(bn(x) + residual) in one pass, the end of a residual block.
// plane_moments (may be undefined): x's, from conv2d_with_moments; in training the batch
// statistics are combined from them instead of summed over x.
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, const Tensor& num_batches_tracked, const BatchNormOptions& options,
                  const Tensor& residual = {}, const Tensor& plane_moments = {});

// ---- relu (ops/relu.cpp) ----
Tensor relu(const Tensor& x);

// ---- gelu (ops/gelu.cpp) ----
// x * Phi(x), Phi the standard normal CDF (the exact GELU, PyTorch's nn.GELU()).
Tensor gelu(const Tensor& x);

// ---- layer_norm (ops/layer_norm.cpp): composed of the ops above, no kernel of its own ----
// Normalises each sample over its last normalized_dims dims (biased variance), then
// scales by weight and shifts by bias (each shaped as those dims, or undefined), as
// PyTorch's F.layer_norm(x, x.shape[-normalized_dims:], weight, bias, eps).
Tensor layer_norm(const Tensor& x, int64_t normalized_dims, const Tensor& weight = {}, const Tensor& bias = {},
                  float eps = 1e-5f);

// ---- pooling (ops/pool.cpp) ----
struct Pool2dOptions {
  int64_t kernel = 2;
  int64_t stride = 0;  // 0 means equal to kernel, as in PyTorch
  int64_t padding = 0;
};
Tensor max_pool2d(const Tensor& x, Pool2dOptions options);
Tensor avg_pool2d(const Tensor& x, Pool2dOptions options);
Tensor global_avg_pool2d(const Tensor& x);  // (N,C,H,W) -> (N,C)

// ---- softmax and loss (ops/loss.cpp) ----
Tensor log_softmax(const Tensor& x);  // over the last dim of a 2-D tensor
// Mean softmax cross-entropy of logits (N, classes) against int64 labels (N).
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing = 0.0f);

// ---- zero padding (ops/pad.cpp) ----
// Dim d grows by padding[d].first zeros before and padding[d].second after (dims
// beyond padding.size() are untouched).
Tensor pad(const Tensor& x, const std::vector<std::pair<int64_t, int64_t>>& padding);

// ---- dropout (ops/dropout.cpp) ----
// Zeroes each element with probability p and scales the rest by 1/(1-p) when
// training; the identity otherwise.
Tensor dropout(const Tensor& x, float p, bool training, Rng& rng);

// Runs backward from `root` with gradient `grad_output` (autograd.cpp).
void run_backward(const Tensor& root, const Tensor& grad_output);

}  // namespace polyak
