// Zero padding along any dims.
//
// Forward: y = zeros of the padded shape, with x copied into the interior view
// y[b0 : b0 + n0, b1 : b1 + n1, ...]. Backward: the padding contributed nothing, so
// dx is the interior view of dy (made contiguous).
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"

namespace polyak {

namespace {
Tensor interior(const Tensor& padded, const std::vector<std::pair<int64_t, int64_t>>& padding, const Shape& inner) {
  Tensor view = padded;
  for (size_t d = 0; d < padding.size(); ++d)
    view = view.slice(static_cast<int64_t>(d), padding[d].first, padding[d].first + inner[d], 1);
  return view;
}
}  // namespace

Tensor pad(const Tensor& x, const std::vector<std::pair<int64_t, int64_t>>& padding) {
  detail::require_float(x, "pad", "input");
  if (static_cast<int64_t>(padding.size()) > x.dim())
    throw std::invalid_argument("pad: " + std::to_string(padding.size()) + " paddings for shape " + shape_str(x.shape()));
  Shape out_shape = x.shape();
  for (size_t d = 0; d < padding.size(); ++d) {
    if (padding[d].first < 0 || padding[d].second < 0)
      throw std::invalid_argument("pad: negative padding for dim " + std::to_string(d));
    out_shape[d] += padding[d].first + padding[d].second;
  }
  Tensor out = Tensor::zeros(out_shape, DType::F32, x.device());
  {
    NoGradGuard no_grad;  // the interior view is bookkeeping, not part of the graph
    interior(out, padding, x.shape()).copy_(x);
  }
  if (should_record({x})) {
    record(out, "pad", {x}, [padding, inner = x.shape()](const Tensor& g) {
      return std::vector<Tensor>{interior(g, padding, inner).contiguous()};
    });
  }
  return out;
}

}  // namespace polyak
