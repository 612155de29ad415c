// conv2d: the 2-D cross-correlation of deep learning (NCHW, groups = 1, dilation = 1).
//
//   y[n,k,p,q] = b[k] + sum_{c,r,s} w[k,c,r,s] * x[n, c, p*stride - pad + r, q*stride - pad + s]
//
// with x read as zero outside the image and P = (H + 2*pad - R) / stride + 1 (Q likewise).
// Its gradients, given dy = dL/dy:
//
//   dx[n,c,h,w] = sum over the (k,p,q,r,s) with p*stride - pad + r = h, q*stride - pad + s = w
//                 of w[k,c,r,s] * dy[n,k,p,q]            (the "transposed convolution")
//   dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*stride - pad + r, q*stride - pad + s]
//   db[k]       = sum_{n,p,q} dy[n,k,p,q]
//
// With the fused epilogue out = relu(y + residual), backward first masks the incoming
// gradient where out was 0; the masked gradient is the residual's and replaces dy above.
//
// The kernels (engine/ref/conv2d.cpp is the definition; engine/cpu/conv2d.cpp or cuDNN
// compute it fast) do the arithmetic; this file checks shapes and wires autograd. Where
// the table has the fusions (engine/kernels.h) the epilogue, the plane moments and the
// summing data gradient ride along in the convolution's pass; otherwise they are the
// plain kernels composed.
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"

namespace polyak {

namespace {

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument("conv2d: " + message); }

Conv2dGeom conv2d_geometry(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dOptions& o) {
  if (!x.defined()) fail("input is undefined");
  if (!weight.defined()) fail("weight is undefined");
  if (x.dim() != 4) fail("input must be 4-D (N, C, H, W), got shape " + shape_str(x.shape()));
  if (weight.dim() != 4) fail("weight must be 4-D (K, C, R, S), got shape " + shape_str(weight.shape()));
  if (x.dtype() != DType::F32 || weight.dtype() != DType::F32)
    fail(std::string("input and weight must be float32, got ") + dtype_name(x.dtype()) + " and " +
         dtype_name(weight.dtype()));
  if (x.device() != weight.device())
    fail(std::string("input is on ") + device_name(x.device()) + " but weight is on " + device_name(weight.device()));
  if (o.stride < 1) fail("stride must be at least 1, got " + std::to_string(o.stride));
  if (o.padding < 0) fail("padding must be non-negative, got " + std::to_string(o.padding));

  Conv2dGeom g{};
  g.N = x.size(0), g.C = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.K = weight.size(0), g.R = weight.size(2), g.S = weight.size(3);
  if (g.K < 1 || weight.size(1) < 1 || g.R < 1 || g.S < 1)
    fail("weight shape " + shape_str(weight.shape()) + " has an empty dimension");
  if (weight.size(1) != g.C)
    fail("input shape " + shape_str(x.shape()) + " has " + std::to_string(g.C) + " channels but weight shape " +
         shape_str(weight.shape()) + " expects " + std::to_string(weight.size(1)));
  if (bias.defined()) {
    if (bias.dtype() != DType::F32) fail(std::string("bias must be float32, got ") + dtype_name(bias.dtype()));
    if (bias.device() != x.device())
      fail(std::string("bias is on ") + device_name(bias.device()) + " but input is on " + device_name(x.device()));
    if (bias.dim() != 1 || bias.size(0) != g.K)
      fail("bias shape " + shape_str(bias.shape()) + " does not match the " + std::to_string(g.K) +
           " output channels of weight shape " + shape_str(weight.shape()));
  }
  g.stride_h = g.stride_w = o.stride;
  g.pad_h = g.pad_w = o.padding;
  const int64_t padded_h = g.H + 2 * o.padding, padded_w = g.W + 2 * o.padding;
  if (padded_h < g.R || padded_w < g.S)
    fail("kernel " + std::to_string(g.R) + "x" + std::to_string(g.S) + " is larger than the padded input " +
         std::to_string(padded_h) + "x" + std::to_string(padded_w) + " (input shape " + shape_str(x.shape()) +
         ", padding " + std::to_string(o.padding) + ")");
  g.P = (padded_h - g.R) / g.stride_h + 1;
  g.Q = (padded_w - g.S) / g.stride_w + 1;
  return g;
}

// conv2d, and where plane_moments is given and the backend's kernel can, the moments of
// each plane of the output into *plane_moments (left undefined where it cannot).
Tensor convolve(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dOptions options,
                const Tensor& residual, Tensor* plane_moments) {
  const Conv2dGeom g = conv2d_geometry(x, weight, bias, options);
  const Shape out_shape{g.N, g.K, g.P, g.Q};
  if (residual.defined() &&
      (residual.dtype() != DType::F32 || residual.shape() != out_shape || residual.device() != x.device()))
    fail("the residual must be float32 " + shape_str(out_shape) + " on " + device_name(x.device()) +
         " like the output, got " + dtype_name(residual.dtype()) + " " + shape_str(residual.shape()) + " on " +
         device_name(residual.device()));
  const Tensor xc = x.contiguous().detach();
  const Tensor wc = weight.contiguous().detach();
  const Tensor bc = bias.defined() ? bias.contiguous().detach() : Tensor();
  const Tensor rc = residual.defined() ? residual.contiguous().detach() : Tensor();
  const Kernels& k = kernels(x.device());

  Tensor out = Tensor::empty(out_shape, DType::F32, x.device());
  const float* const b = bc.defined() ? bc.data<float>() : nullptr;
  Tensor moments = plane_moments ? Tensor::empty({g.N, g.K, kPlaneMoments}, DType::F32, x.device()) : Tensor();
  const Epilogue epilogue{rc.defined() ? rc.data<float>() : nullptr, options.relu};
  if (moments.defined() && k.conv2d_forward_moments &&
      k.conv2d_forward_moments(g, xc.data<float>(), wc.data<float>(), b, out.data<float>(), moments.data<float>())) {
    *plane_moments = moments;
  } else if (k.conv2d_forward_epilogue) {
    k.conv2d_forward_epilogue(g, xc.data<float>(), wc.data<float>(), b, epilogue, out.data<float>());
  } else {
    k.conv2d_forward(g, xc.data<float>(), wc.data<float>(), b, out.data<float>());
    detail::apply_epilogue(k, epilogue, out.numel(), out.data<float>());
  }

  if (should_record({x, weight, bias, residual})) {
    const bool need_dx = x.requires_grad();
    const bool need_dw = weight.requires_grad();
    const bool need_db = bias.defined() && bias.requires_grad();
    const bool need_dr = residual.defined() && residual.requires_grad();
    // Keep only what the wanted gradients read: dx needs w, dw needs x, the ReLU its output.
    // The data gradient adds into the sum autograd holds for x where the kernel can: in a
    // residual block, the shortcut's gradient, which arrives first.
    record_summing(out, "conv2d", {x, weight, bias, residual},
           [&k, g, need_dx, need_dw, need_db, need_dr, xs = need_dw ? xc : Tensor(), ws = need_dx ? wc : Tensor(),
            relu_output = options.relu ? out.detach() : Tensor()](const Tensor& grad, const std::vector<Tensor>& sums) {
             // The incoming gradient is ours to overwrite when nothing else sees it (the walk
             // drops grad after this call), or when it is the masked copy made here.
             bool dy_free = grad.owns_data_alone();
             Tensor dy = grad.contiguous();
             if (relu_output.defined()) {
               Tensor masked = Tensor::empty(dy.shape(), DType::F32, dy.device());
               k.relu_backward(dy.numel(), relu_output.data<float>(), dy.data<float>(), masked.data<float>());
               dy = masked;
               dy_free = true;
             }
             // The filter and bias gradients first: the data gradient may then write over dy.
             Tensor dx, dw, db;
             if (need_dw) {
               dw = Tensor::empty({g.K, g.C, g.R, g.S}, DType::F32, dy.device());
               if (need_db) db = Tensor::empty({g.K}, DType::F32, dy.device());
               k.conv2d_backward_filter(g, xs.data<float>(), dy.data<float>(), dw.data<float>(),
                                         need_db ? db.data<float>() : nullptr);
             } else if (need_db) {
               db = sum(dy, {0, 2, 3});
             }
             if (need_dx) {
               // Into the sum autograd holds for x, or over dy where dx has its shape and no
               // one else reads dy (a store over a line just read costs no read of it first),
               // or into a fresh buffer.
               const Tensor& x_sum = sums[0];
               const Shape x_shape{g.N, g.C, g.H, g.W};
               if (x_sum.defined() && x_sum.shape() == x_shape && x_sum.is_contiguous() &&
                   k.conv2d_backward_data_add && k.conv2d_backward_data_add(g, dy.data<float>(), ws.data<float>(), x_sum.data<float>())) {
                 dx = x_sum;
               } else if (dy_free && !need_dr && dy.shape() == x_shape &&
                          k.conv2d_backward_data_in_place && k.conv2d_backward_data_in_place(g, dy.data<float>(), ws.data<float>())) {
                 dx = dy;
               } else {
                 dx = Tensor::empty(x_shape, DType::F32, dy.device());
                 k.conv2d_backward_data(g, dy.data<float>(), ws.data<float>(), dx.data<float>());
               }
             }
             return std::vector<Tensor>{dx, dw, db, need_dr ? dy : Tensor()};
           });
  }
  return out;
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Conv2dOptions options,
              const Tensor& residual) {
  return convolve(x, weight, bias, options, residual, nullptr);
}

ConvWithMoments conv2d_with_moments(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                    Conv2dOptions options) {
  if (options.relu) fail("the plane moments are the convolution's own output's: no fused ReLU");
  ConvWithMoments result;
  result.output = convolve(x, weight, bias, options, Tensor(), &result.plane_moments);
  return result;
}

}  // namespace polyak
