#include "engine/nn/layers.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/rng.h"

namespace polyak::nn {

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, Rng& rng, int64_t stride,
               int64_t padding, bool with_bias)
    : options{.stride = stride, .padding = padding} {
  const float bound = 1.0f / std::sqrt(static_cast<float>(in_channels * kernel_size * kernel_size));
  weight = register_parameter("weight",
                              Tensor::uniform({out_channels, in_channels, kernel_size, kernel_size}, -bound, bound, rng));
  if (with_bias) bias = register_parameter("bias", Tensor::uniform({out_channels}, -bound, bound, rng));
}

Tensor Conv2d::forward(const Tensor& x) { return conv2d(x, weight, bias, options); }

BatchNorm2d::BatchNorm2d(int64_t num_features, float eps_, std::optional<float> momentum_, bool affine)
    : eps(eps_), momentum(momentum_) {
  if (affine) {
    weight = register_parameter("weight", Tensor::ones({num_features}));
    bias = register_parameter("bias", Tensor::zeros({num_features}));
  }
  running_mean = register_buffer("running_mean", Tensor::zeros({num_features}));
  running_var = register_buffer("running_var", Tensor::ones({num_features}));
  num_batches_tracked = register_buffer("num_batches_tracked", Tensor::zeros({}, DType::I64));
}

Tensor BatchNorm2d::forward(const Tensor& x) { return forward(x, Tensor(), false); }

Tensor BatchNorm2d::forward(const Tensor& x, const Tensor& residual, bool relu, const Tensor& plane_moments) {
  return batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked,
                    {.training = is_training(), .eps = eps, .momentum = momentum, .relu = relu}, residual,
                    plane_moments);
}

void BatchNorm2d::reset_running_stats() {
  running_mean.zero_();
  running_var.fill_(1.0f);
  num_batches_tracked.zero_();
}

Tensor conv_bn(Conv2d& conv, BatchNorm2d& bn, const Tensor& x, const ConvBnEpilogue& then) {
  if (bn.is_training()) {
    // The convolution sums its output planes' moments as it writes them, where it can;
    // the BatchNorm then combines those instead of reading the output for its statistics.
    const ConvWithMoments z = conv2d_with_moments(x, conv.weight, conv.bias, conv.options);
    return bn.forward(z.output, then.residual, then.relu, z.plane_moments);
  }
  const int64_t filters = conv.weight.size(0);
  if (bn.running_mean.numel() != filters)
    throw std::invalid_argument("conv_bn: a convolution with " + std::to_string(filters) +
                                " filters feeds a BatchNorm of " + std::to_string(bn.running_mean.numel()) + " channels");
  Tensor scale = rdiv_scalar(sqrt(add_scalar(bn.running_var, bn.eps)), 1.0f);
  if (bn.weight.defined()) scale = scale * bn.weight;
  Tensor shift = neg(bn.running_mean * scale);
  if (bn.bias.defined()) shift = shift + bn.bias;
  if (conv.bias.defined()) shift = shift + conv.bias * scale;
  Conv2dOptions options = conv.options;
  options.relu = then.relu;
  return conv2d(x, conv.weight * scale.reshape({filters, 1, 1, 1}), shift, options, then.residual);
}

Linear::Linear(int64_t in_features, int64_t out_features, Rng& rng, bool with_bias) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(in_features));
  weight = register_parameter("weight", Tensor::uniform({out_features, in_features}, -bound, bound, rng));
  if (with_bias) bias = register_parameter("bias", Tensor::uniform({out_features}, -bound, bound, rng));
}

Tensor Linear::forward(const Tensor& x) { return linear(x, weight, bias); }

LayerNorm::LayerNorm(const Shape& normalized_shape, float eps) : eps(eps) {
  weight = register_parameter("weight", Tensor::full(normalized_shape, 1.0f));
  bias = register_parameter("bias", Tensor::zeros(normalized_shape));
}

Tensor LayerNorm::forward(const Tensor& x) {
  return layer_norm(x, static_cast<int64_t>(weight.dim()), weight, bias, eps);
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (const auto& layer : layers_) h = layer->forward(h);
  return h;
}

}  // namespace polyak::nn
