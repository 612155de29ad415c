// The standard layers, as their torch.nn namesakes (same parameter names, shapes,
// defaults and initialisation).
#pragma once

#include <optional>

#include "engine/nn/module.h"
#include "engine/ops.h"

namespace polyak {
class Rng;
}

namespace polyak::nn {

// torch.nn.Conv2d (groups = 1, dilation = 1). Initialisation as PyTorch's default:
// weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt 5).
class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, Rng& rng, int64_t stride = 1,
         int64_t padding = 0, bool bias = true);
  Tensor forward(const Tensor& x) override;

  Tensor weight, bias;  // (out, in, k, k), (out) or undefined
  Conv2dOptions options;
};

// torch.nn.BatchNorm2d / BatchNorm1d (the op accepts (N,C,H,W) and (N,C)). momentum
// std::nullopt is a cumulative average of the batch statistics, as momentum=None.
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t num_features, float eps = 1e-5f, std::optional<float> momentum = 0.1f,
                       bool affine = true);
  Tensor forward(const Tensor& x) override;
  // relu(bn(x) + residual) (the residual when defined, the ReLU when asked) in one op:
  // batch_norm's fused epilogue; plane_moments, when defined, are x's
  // (conv2d_with_moments), for the batch statistics in training.
  Tensor forward(const Tensor& x, const Tensor& residual, bool relu, const Tensor& plane_moments = {});
  // Running mean 0, variance 1, counter 0 (as reset_running_stats()).
  void reset_running_stats();

  Tensor weight, bias;                                      // (C), undefined if !affine
  Tensor running_mean, running_var, num_batches_tracked;    // (C), (C), int64 scalar
  float eps;
  std::optional<float> momentum;
};

// bn(conv(x)). In evaluation mode the BatchNorm is the fixed per-channel affine map
// z -> s z + t, s = gamma / sqrt(running_var + eps), t = beta - running_mean * s, so
//   s (w * x + b) + t = (s w) * x + (s b + t):
// one convolution with the scale folded into its K filters (K*C*R*S products) instead
// of a second pass over the whole output. The result differs from the two steps by
// rounding only, and gradients still reach every parameter through the fold. In
// training mode (and in a BN recompute's cumulative mode) BN needs the batch's own
// statistics, and both steps run as written.
//
// `then` is what follows the BatchNorm: the residual added (when defined), then the ReLU
// (when asked), fused into the pass that writes the result: the BatchNorm's in training,
// the folded convolution's in evaluation.
struct ConvBnEpilogue {
  Tensor residual = {};
  bool relu = false;
};
Tensor conv_bn(Conv2d& conv, BatchNorm2d& bn, const Tensor& x, const ConvBnEpilogue& then = {});

// torch.nn.Linear: y = x W^T + b; W, b ~ U(-1/sqrt(in), 1/sqrt(in)).
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, Rng& rng, bool bias = true);
  Tensor forward(const Tensor& x) override;

  Tensor weight, bias;
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override { return relu(x); }
};

// torch.nn.GELU() (the exact form).
class GELU : public Module {
 public:
  Tensor forward(const Tensor& x) override { return gelu(x); }
};

// torch.nn.LayerNorm(normalized_shape, eps): normalises over the last
// normalized_shape.size() dims; weight ones and bias zeros, shaped normalized_shape.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(const Shape& normalized_shape, float eps = 1e-5f);
  Tensor forward(const Tensor& x) override;

  Tensor weight, bias;
  float eps;
};

class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(Pool2dOptions options) : options(options) {}
  Tensor forward(const Tensor& x) override { return max_pool2d(x, options); }
  Pool2dOptions options;
};

class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(Pool2dOptions options) : options(options) {}
  Tensor forward(const Tensor& x) override { return avg_pool2d(x, options); }
  Pool2dOptions options;
};

// (N,C,H,W) -> (N,C): AdaptiveAvgPool2d(1) followed by flatten.
class GlobalAvgPool2d : public Module {
 public:
  Tensor forward(const Tensor& x) override { return global_avg_pool2d(x); }
};

class Flatten : public Module {
 public:
  Tensor forward(const Tensor& x) override { return x.flatten(1); }
};

class Identity : public Module {
 public:
  Tensor forward(const Tensor& x) override { return x; }
};

// Draws its masks from the Rng it is given (the run's one RNG), so a seed fixes them.
class Dropout : public Module {
 public:
  Dropout(float p, Rng& rng) : p(p), rng_(&rng) {}
  Tensor forward(const Tensor& x) override { return dropout(x, p, is_training(), *rng_); }
  float p;

 private:
  Rng* rng_;
};

// Children named "0", "1", ... applied in order, as torch.nn.Sequential.
class Sequential : public Module {
 public:
  template <class M>
  std::shared_ptr<M> add(std::shared_ptr<M> module) {
    layers_.push_back(module);
    return register_module(std::to_string(layers_.size() - 1), module);
  }
  Tensor forward(const Tensor& x) override;
  size_t size() const { return layers_.size(); }

 private:
  std::vector<std::shared_ptr<Module>> layers_;
};

}  // namespace polyak::nn
