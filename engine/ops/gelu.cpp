// GELU: y = x * Phi(x), Phi the standard normal's distribution function (the exact form,
// as PyTorch's nn.GELU()); dx = dy * (Phi(x) + x * phi(x)). The math and the plain loops
// are in engine/ref/gelu.cpp. Backward reads the input, which the closure keeps alive.
//
// Through call_kernel: a device whose table has no GELU kernel would run the reference
// on the host (correct, slow, reported once). The fast CPU table and the CUDA table
// have one (engine/cpu/gelu.cpp, engine/cuda/gelu.cu).
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"

namespace polyak {

Tensor gelu(const Tensor& x) {
  detail::require_float(x, "gelu", "input");
  Tensor in = x.contiguous().detach();
  Tensor out = Tensor::empty(x.shape(), DType::F32, x.device());
  detail::call_kernel(x.device(), &Kernels::gelu_forward, "gelu_forward", {&in}, {&out}, [&](const Kernels& k) {
    k.gelu_forward(in.numel(), in.data<float>(), out.data<float>());
  });
  if (should_record({x})) {
    record(out, "gelu", {x}, [input = in](const Tensor& grad) {
      Tensor x_saved = input, dy = grad.contiguous();
      Tensor dx = Tensor::empty(input.shape(), DType::F32, input.device());
      detail::call_kernel(input.device(), &Kernels::gelu_backward, "gelu_backward", {&x_saved, &dy}, {&dx},
                          [&](const Kernels& k) {
                            k.gelu_backward(x_saved.numel(), x_saved.data<float>(), dy.data<float>(),
                                            dx.data<float>());
                          });
      return std::vector<Tensor>{dx};
    });
  }
  return out;
}

}  // namespace polyak
