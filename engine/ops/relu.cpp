// ReLU: y = max(x, 0). Backward: dx = dy where y > 0, else 0 (read from the output,
// so the input need not be kept alive).
#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"

namespace polyak {

Tensor relu(const Tensor& x) {
  detail::require_float(x, "relu", "input");
  const Tensor in = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), DType::F32, x.device());
  kernels(x.device()).relu_forward(x.numel(), in.data<float>(), out.data<float>());
  if (should_record({x})) {
    record(out, "relu", {x}, [y = out.detach()](const Tensor& g) {
      const Tensor gc = g.contiguous();
      Tensor dx = Tensor::empty(y.shape(), DType::F32, y.device());
      kernels(y.device()).relu_backward(y.numel(), y.data<float>(), gc.data<float>(), dx.data<float>());
      return std::vector<Tensor>{dx};
    });
  }
  return out;
}

}  // namespace polyak
