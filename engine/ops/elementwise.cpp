// Elementwise ops with numpy broadcasting.
//
// Binary ops align shapes from the right; a dim of size 1 (or a missing leading dim)
// is repeated to match the other operand. The kernel reads that operand with stride
// 0 along such dims, so nothing is materialised. Backward: the gradient of a
// broadcast operand is the upstream gradient summed over the dims it was repeated
// along (sum_to_shape), times the local derivative:
//   a + b: (g, g)        a - b: (g, -g)
//   a * b: (g b, g a)    a / b: (g / b, -g a / b^2 = -g y / b)
// Scalar and unary maps: d(x+s) = g, d(x s) = g s, d(s-x) = -g, d(s/x) = -g y / x,
// d(x^p) = g p x^(p-1), d(-x) = -g, d(e^x) = g y, d(log x) = g / x, d(sqrt x) = g / 2y.
#include <algorithm>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"

namespace polyak {

using detail::require_float;
using detail::require_same_device;

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      throw std::invalid_argument("shapes " + shape_str(a) + " and " + shape_str(b) + " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {

// Strides that read `t` as if it had shape `out` (0 along broadcast dims).
void broadcast_strides(const Tensor& t, const Shape& out, int64_t* strides) {
  const size_t lead = out.size() - t.shape().size();
  for (size_t i = 0; i < out.size(); ++i) {
    strides[i] = i < lead || t.shape()[i - lead] == 1 ? 0 : t.strides()[i - lead];
  }
}

Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b, const char* name) {
  require_float(a, name, "left operand");
  require_float(b, name, "right operand");
  require_same_device(a, b, name);
  const Shape shape = broadcast_shapes(a.shape(), b.shape());
  if (shape.size() > kMaxDims) throw std::invalid_argument(std::string(name) + ": too many dims");
  BroadcastGeom geom;
  geom.ndim = static_cast<int>(shape.size());
  std::copy(shape.begin(), shape.end(), geom.shape);
  broadcast_strides(a, shape, geom.a_strides);
  broadcast_strides(b, shape, geom.b_strides);
  Tensor out = Tensor::empty(shape, DType::F32, a.device());
  kernels(a.device()).binary(op, geom, a.data<float>(), b.data<float>(), out.data<float>());
  return out;
}

Tensor scalar_forward(ScalarOp op, const Tensor& x, float s, const char* name) {
  require_float(x, name, "input");
  const Tensor in = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), DType::F32, x.device());
  kernels(x.device()).scalar(op, x.numel(), in.data<float>(), s, out.data<float>());
  return out;
}

Tensor unary_forward(UnaryOp op, const Tensor& x, const char* name) {
  require_float(x, name, "input");
  const Tensor in = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), DType::F32, x.device());
  kernels(x.device()).unary(op, x.numel(), in.data<float>(), out.data<float>());
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Add, a, b, "add");
  if (should_record({a, b})) {
    record(out, "add", {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
      return std::vector<Tensor>{sum_to_shape(g, sa), sum_to_shape(g, sb)};
    });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Sub, a, b, "sub");
  if (should_record({a, b})) {
    record(out, "sub", {a, b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
      return std::vector<Tensor>{sum_to_shape(g, sa), sum_to_shape(neg(g), sb)};
    });
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Mul, a, b, "mul");
  if (should_record({a, b})) {
    record(out, "mul", {a, b}, [a = a.detach(), b = b.detach(), ra = a.requires_grad(), rb = b.requires_grad()](const Tensor& g) {
      return std::vector<Tensor>{ra ? sum_to_shape(mul(g, b), a.shape()) : Tensor(),
                                 rb ? sum_to_shape(mul(g, a), b.shape()) : Tensor()};
    });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Div, a, b, "div");
  if (should_record({a, b})) {
    record(out, "div", {a, b}, [y = out.detach(), b = b.detach(), sa = a.shape(), rb = b.requires_grad()](const Tensor& g) {
      const Tensor ga = div(g, b);
      return std::vector<Tensor>{sum_to_shape(ga, sa), rb ? sum_to_shape(neg(mul(ga, y)), b.shape()) : Tensor()};
    });
  }
  return out;
}

Tensor add_scalar(const Tensor& x, float s) {
  Tensor out = scalar_forward(ScalarOp::Add, x, s, "add_scalar");
  if (should_record({x})) record(out, "add_scalar", {x}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
  return out;
}

Tensor mul_scalar(const Tensor& x, float s) {
  Tensor out = scalar_forward(ScalarOp::Mul, x, s, "mul_scalar");
  if (should_record({x}))
    record(out, "mul_scalar", {x}, [s](const Tensor& g) { return std::vector<Tensor>{mul_scalar(g, s)}; });
  return out;
}

Tensor rsub_scalar(const Tensor& x, float s) {
  Tensor out = scalar_forward(ScalarOp::RSub, x, s, "rsub_scalar");
  if (should_record({x})) record(out, "rsub_scalar", {x}, [](const Tensor& g) { return std::vector<Tensor>{neg(g)}; });
  return out;
}

Tensor rdiv_scalar(const Tensor& x, float s) {
  Tensor out = scalar_forward(ScalarOp::RDiv, x, s, "rdiv_scalar");
  if (should_record({x})) {
    record(out, "rdiv_scalar", {x}, [x = x.detach(), y = out.detach()](const Tensor& g) {
      return std::vector<Tensor>{neg(div(mul(g, y), x))};
    });
  }
  return out;
}

Tensor pow_scalar(const Tensor& x, float exponent) {
  Tensor out = scalar_forward(ScalarOp::Pow, x, exponent, "pow_scalar");
  if (should_record({x})) {
    record(out, "pow_scalar", {x}, [x = x.detach(), exponent](const Tensor& g) {
      return std::vector<Tensor>{mul(g, mul_scalar(pow_scalar(x, exponent - 1.0f), exponent))};
    });
  }
  return out;
}

Tensor neg(const Tensor& x) {
  Tensor out = unary_forward(UnaryOp::Neg, x, "neg");
  if (should_record({x})) record(out, "neg", {x}, [](const Tensor& g) { return std::vector<Tensor>{neg(g)}; });
  return out;
}

Tensor exp(const Tensor& x) {
  Tensor out = unary_forward(UnaryOp::Exp, x, "exp");
  if (should_record({x}))
    record(out, "exp", {x}, [y = out.detach()](const Tensor& g) { return std::vector<Tensor>{mul(g, y)}; });
  return out;
}

Tensor log(const Tensor& x) {
  Tensor out = unary_forward(UnaryOp::Log, x, "log");
  if (should_record({x}))
    record(out, "log", {x}, [x = x.detach()](const Tensor& g) { return std::vector<Tensor>{div(g, x)}; });
  return out;
}

Tensor sqrt(const Tensor& x) {
  Tensor out = unary_forward(UnaryOp::Sqrt, x, "sqrt");
  if (should_record({x})) {
    record(out, "sqrt", {x}, [y = out.detach()](const Tensor& g) {
      return std::vector<Tensor>{mul_scalar(div(g, y), 0.5f)};
    });
  }
  return out;
}

}  // namespace polyak
