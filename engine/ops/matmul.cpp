// Matrix product and the fully connected layer, on sgemm.
//
// matmul: Y = A B with A (M,K), B (K,N). Backward: dA = dY B^T, dB = A^T dY.
// linear: y = x W^T + b with x (N,in), W (out,in), b (out), the layout of
// torch.nn.Linear. Backward: dx = dy W, dW = dy^T x, db = sum over rows of dy.
#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"

namespace polyak {

using detail::require_dims;
using detail::require_float;
using detail::require_same_device;

namespace {
// C (M,N) = op(A) op(B) on contiguous operands, op = transpose when the flag is set.
Tensor product(const Tensor& a, bool ta, const Tensor& b, bool tb) {
  const int64_t M = ta ? a.size(1) : a.size(0), K = ta ? a.size(0) : a.size(1);
  const int64_t N = tb ? b.size(0) : b.size(1);
  Tensor c = Tensor::empty({M, N}, DType::F32, a.device());
  kernels(a.device()).gemm(ta, tb, M, N, K, 1.0f, a.data<float>(), a.size(1), b.data<float>(), b.size(1), 0.0f,
                           c.data<float>(), N);
  return c;
}
}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  require_float(a, "matmul", "left operand");
  require_float(b, "matmul", "right operand");
  require_same_device(a, b, "matmul");
  require_dims(a, 2, "matmul", "left operand");
  require_dims(b, 2, "matmul", "right operand");
  if (a.size(1) != b.size(0))
    throw std::invalid_argument("matmul: inner dims differ: " + shape_str(a.shape()) + " x " + shape_str(b.shape()));
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  Tensor out = product(ac, false, bc, false);
  if (should_record({a, b})) {
    record(out, "matmul", {a, b}, [ac, bc, ra = a.requires_grad(), rb = b.requires_grad()](const Tensor& g) {
      const Tensor gc = g.contiguous();
      return std::vector<Tensor>{ra ? product(gc, false, bc, true) : Tensor(), rb ? product(ac, true, gc, false) : Tensor()};
    });
  }
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  require_float(x, "linear", "input");
  require_float(weight, "linear", "weight");
  require_same_device(x, weight, "linear");
  require_same_device(x, bias, "linear");
  require_dims(x, 2, "linear", "input");
  require_dims(weight, 2, "linear", "weight");
  const int64_t N = x.size(0), in = x.size(1), out_features = weight.size(0);
  if (weight.size(1) != in)
    throw std::invalid_argument("linear: input " + shape_str(x.shape()) + " does not match weight " +
                                shape_str(weight.shape()) + " (in_features " + std::to_string(weight.size(1)) + ")");
  if (bias.defined()) {
    require_float(bias, "linear", "bias");
    if (bias.shape() != Shape{out_features})
      throw std::invalid_argument("linear: bias shape " + shape_str(bias.shape()) + ", expected [" +
                                  std::to_string(out_features) + "]");
  }
  const Tensor xc = x.contiguous(), wc = weight.contiguous();
  Tensor out = Tensor::empty({N, out_features}, DType::F32, x.device());
  const Kernels& be = kernels(x.device());
  float beta = 0.0f;
  if (bias.defined()) {
    // Start C from the bias repeated over rows (a stride-0 copy), then add x W^T onto
    // it with beta = 1.
    be.copy_strided(out.raw_data(), contiguous_layout({N, out_features}), bias.contiguous().raw_data(),
                    make_layout({N, out_features}, {0, 1}), sizeof(float));
    beta = 1.0f;
  }
  be.gemm(false, true, N, out_features, in, 1.0f, xc.data<float>(), in, wc.data<float>(), in, beta, out.data<float>(),
          out_features);
  if (should_record({x, weight, bias})) {
    record(out, "linear", {x, weight, bias},
           [xc, wc, rx = x.requires_grad(), rw = weight.requires_grad(),
            rb = bias.defined() && bias.requires_grad()](const Tensor& g) {
             const Tensor gc = g.contiguous();
             return std::vector<Tensor>{rx ? product(gc, false, wc, false) : Tensor(),
                                        rw ? product(gc, true, xc, false) : Tensor(),
                                        rb ? sum(gc, {0}) : Tensor()};
           });
  }
  return out;
}

}  // namespace polyak
