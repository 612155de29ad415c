// layer_norm: normalise each sample over its last `normalized_dims` dims, as PyTorch's
// F.layer_norm(x, x.shape[-normalized_dims:], weight, bias, eps):
//
//   mu = mean(x),  var = mean((x - mu)^2)  (biased, over the normalised dims),
//   y  = (x - mu) / sqrt(var + eps) * weight + bias.
//
// Built entirely from existing differentiable ops (mean, sub, mul, sqrt, div, with
// broadcasting): no kernel of its own, so every backend runs it, and autograd derives
// its backward from theirs. The price is memory traffic: about eight passes where a
// fused kernel would take two, which is the reason to write one (docs/ADDING_A_LAYER.md)
// only when a profile says LayerNorm matters.
#include <stdexcept>
#include <string>

#include "engine/ops.h"

namespace polyak {

Tensor layer_norm(const Tensor& x, int64_t normalized_dims, const Tensor& weight, const Tensor& bias, float eps) {
  if (normalized_dims < 1 || normalized_dims > x.dim())
    throw std::invalid_argument("layer_norm: normalized_dims must be in [1, " + std::to_string(x.dim()) +
                                "] for input " + shape_str(x.shape()) + ", got " + std::to_string(normalized_dims));
  if (!(eps >= 0.0f)) throw std::invalid_argument("layer_norm: eps must be >= 0");
  const Shape normalized(x.shape().end() - normalized_dims, x.shape().end());
  for (const Tensor* affine : {&weight, &bias})
    if (affine->defined() && affine->shape() != normalized)
      throw std::invalid_argument("layer_norm: weight and bias must have shape " + shape_str(normalized) + ", got " +
                                  shape_str(affine->shape()));
  std::vector<int64_t> dims;
  for (int64_t d = x.dim() - normalized_dims; d < x.dim(); ++d) dims.push_back(d);

  const Tensor centred = x - mean(x, dims, /*keepdim=*/true);
  const Tensor variance = mean(centred * centred, dims, /*keepdim=*/true);
  Tensor y = centred / sqrt(variance + eps);
  if (weight.defined()) y = y * weight;  // broadcasts over the leading dims
  if (bias.defined()) y = y + bias;
  return y;
}

}  // namespace polyak
