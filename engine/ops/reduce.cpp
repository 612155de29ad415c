// Sum and mean, over all elements or over given dims.
//
// Forward: y = sum over the reduced dims. Backward: every input element contributed
// with weight 1, so dx is the upstream gradient repeated along the reduced dims (a
// broadcasting copy, read with stride 0); mean scales both by 1 / count.
#include <algorithm>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"

namespace polyak {

namespace {

std::vector<bool> reduced_dims(const Tensor& x, const std::vector<int64_t>& dims, const char* op) {
  std::vector<bool> flags(x.dim(), false);
  for (int64_t d : dims) {
    const int64_t k = d < 0 ? d + x.dim() : d;
    if (k < 0 || k >= x.dim())
      throw std::out_of_range(std::string(op) + ": dim " + std::to_string(d) + " out of range for shape " +
                              shape_str(x.shape()));
    flags[k] = true;
  }
  return flags;
}

// Repeats g (shape of x with reduced dims set to 1) back to x's shape.
Tensor expand_to(const Tensor& g, const Shape& kept_shape, const Shape& full_shape) {
  const Tensor src = g.reshape(kept_shape).contiguous();
  Shape strides = contiguous_strides(kept_shape);
  for (size_t i = 0; i < full_shape.size(); ++i)
    if (kept_shape[i] == 1) strides[i] = 0;
  Tensor out = Tensor::empty(full_shape, DType::F32, g.device());
  kernels(g.device()).copy_strided(out.raw_data(), contiguous_layout(full_shape), src.raw_data(),
                                   make_layout(full_shape, strides), sizeof(float));
  return out;
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  detail::require_float(x, "sum", "input");
  const std::vector<bool> flags = reduced_dims(x, dims, "sum");
  const Tensor in = x.contiguous();
  ReduceGeom geom;
  geom.ndim = static_cast<int>(x.dim());
  Shape kept = x.shape(), squeezed;
  for (int64_t d = 0; d < x.dim(); ++d) {
    geom.shape[d] = x.shape()[d];
    geom.reduce[d] = flags[d];
    if (flags[d]) kept[d] = 1;
    else squeezed.push_back(x.shape()[d]);
  }
  Tensor out = Tensor::empty(keepdim ? kept : squeezed, DType::F32, x.device());
  kernels(x.device()).reduce_sum(geom, in.data<float>(), out.data<float>());
  if (should_record({x})) {
    record(out, "sum", {x}, [kept, full = x.shape()](const Tensor& g) {
      return std::vector<Tensor>{expand_to(g, kept, full)};
    });
  }
  return out;
}

Tensor sum(const Tensor& x) {
  std::vector<int64_t> all(x.dim());
  for (int64_t d = 0; d < x.dim(); ++d) all[d] = d;
  return sum(x, all, false);
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  const std::vector<bool> flags = reduced_dims(x, dims, "mean");
  int64_t count = 1;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (flags[d]) count *= x.shape()[d];
  if (count == 0) throw std::invalid_argument("mean: reducing over an empty dim of shape " + shape_str(x.shape()));
  return mul_scalar(sum(x, dims, keepdim), 1.0f / static_cast<float>(count));
}

Tensor mean(const Tensor& x) {
  if (x.numel() == 0) throw std::invalid_argument("mean: empty tensor");
  return mul_scalar(sum(x), 1.0f / static_cast<float>(x.numel()));
}

}  // namespace polyak
