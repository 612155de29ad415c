// Pooling over the spatial dims of NCHW tensors: max, average and global average.
//
// A k x k window slides with stride s over the input, padded by `padding` on every
// side; the output is P = (H + 2*padding - k) / s + 1 rows by Q columns (floor, as
// PyTorch's ceil_mode=False). Per window:
//
//   max:  y = max over the window (padding never wins)      dx[argmax] += dy
//   avg:  y = sum over the window / (k*k) (padding is zero)  dx[h,w] += dy / (k*k) for each
//                                                            window containing (h,w)
//   global average: one window covering the whole plane, (N,C,H,W) -> (N,C),
//                   y = mean of the plane,  dx = dy / (H*W) everywhere.
//
// The kernels live in engine/cpu/pool.cpp (cuDNN on a GPU).
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"

namespace polyak {

namespace {

void check_input(const char* op, const Tensor& x) {
  if (!x.defined()) throw std::invalid_argument(std::string(op) + ": input is undefined");
  if (x.dim() != 4)
    throw std::invalid_argument(std::string(op) + ": input must be 4-D (N, C, H, W), got shape " +
                                shape_str(x.shape()));
  if (x.dtype() != DType::F32)
    throw std::invalid_argument(std::string(op) + ": input must be float32, got " + dtype_name(x.dtype()));
}

Pool2dGeom pool_geometry(const char* op, const Tensor& x, const Pool2dOptions& o) {
  check_input(op, x);
  const std::string name = op;
  const int64_t stride = o.stride == 0 ? o.kernel : o.stride;
  if (o.kernel < 1) throw std::invalid_argument(name + ": kernel must be at least 1, got " + std::to_string(o.kernel));
  if (stride < 1) throw std::invalid_argument(name + ": stride must be at least 1 (or 0 for the kernel size), got " +
                                              std::to_string(o.stride));
  if (o.padding < 0 || 2 * o.padding > o.kernel)
    throw std::invalid_argument(name + ": padding must be between 0 and half the kernel (" +
                                std::to_string(o.kernel) + "), got " + std::to_string(o.padding));
  Pool2dGeom g{};
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.kh = g.kw = o.kernel;
  g.stride_h = g.stride_w = stride;
  g.pad_h = g.pad_w = o.padding;
  const int64_t padded_h = g.H + 2 * o.padding, padded_w = g.W + 2 * o.padding;
  if (padded_h < o.kernel || padded_w < o.kernel)
    throw std::invalid_argument(name + ": kernel " + std::to_string(o.kernel) + "x" + std::to_string(o.kernel) +
                                " is larger than the padded input " + std::to_string(padded_h) + "x" +
                                std::to_string(padded_w) + " (input shape " + shape_str(x.shape()) + ", padding " +
                                std::to_string(o.padding) + ")");
  g.P = (padded_h - g.kh) / g.stride_h + 1;
  g.Q = (padded_w - g.kw) / g.stride_w + 1;
  return g;
}

// Average pooling with geometry g; `out_shape` holds N*C*P*Q elements.
Tensor avg_pool(const char* name, const Tensor& x, const Pool2dGeom& g, const Shape& out_shape) {
  const Tensor xc = x.contiguous().detach();
  Tensor out = Tensor::empty(out_shape, DType::F32, x.device());
  kernels(x.device()).avg_pool2d_forward(g, xc.data<float>(), out.data<float>());
  if (should_record({x})) {
    record(out, name, {x}, [g](const Tensor& grad) {
      const Tensor dy = grad.contiguous();
      Tensor dx = Tensor::empty({g.N, g.C, g.H, g.W}, DType::F32, dy.device());
      kernels(dy.device()).avg_pool2d_backward(g, dy.data<float>(), dx.data<float>());
      return std::vector<Tensor>{dx};
    });
  }
  return out;
}

}  // namespace

Tensor max_pool2d(const Tensor& x, Pool2dOptions options) {
  const Pool2dGeom g = pool_geometry("max_pool2d", x, options);
  const Tensor xc = x.contiguous().detach();
  Tensor out = Tensor::empty({g.N, g.C, g.P, g.Q}, DType::F32, x.device());
  // Index of each window's winner within its input plane, saved for backward.
  Tensor argmax = Tensor::empty({g.N, g.C, g.P, g.Q}, DType::I32, x.device());
  kernels(x.device()).max_pool2d_forward(g, xc.data<float>(), out.data<float>(), argmax.data<int32_t>());
  if (should_record({x})) {
    record(out, "max_pool2d", {x}, [g, argmax](const Tensor& grad) {
      const Tensor dy = grad.contiguous();
      Tensor dx = Tensor::empty({g.N, g.C, g.H, g.W}, DType::F32, dy.device());
      kernels(dy.device()).max_pool2d_backward(g, dy.data<float>(), argmax.data<int32_t>(), dx.data<float>());
      return std::vector<Tensor>{dx};
    });
  }
  return out;
}

Tensor avg_pool2d(const Tensor& x, Pool2dOptions options) {
  const Pool2dGeom g = pool_geometry("avg_pool2d", x, options);
  return avg_pool("avg_pool2d", x, g, {g.N, g.C, g.P, g.Q});
}

Tensor global_avg_pool2d(const Tensor& x) {
  check_input("global_avg_pool2d", x);
  if (x.size(2) < 1 || x.size(3) < 1)
    throw std::invalid_argument("global_avg_pool2d: input shape " + shape_str(x.shape()) + " has an empty plane");
  // One window over the whole plane: the average-pooling kernels with kh = H, kw = W.
  Pool2dGeom g{};
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.kh = g.H, g.kw = g.W;
  g.stride_h = g.H, g.stride_w = g.W;
  g.pad_h = g.pad_w = 0;
  g.P = g.Q = 1;
  return avg_pool("global_avg_pool2d", x, g, {g.N, g.C});
}

}  // namespace polyak
