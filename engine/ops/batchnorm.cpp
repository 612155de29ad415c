// batch_norm: normalise each channel of an (N, C, H, W) or (N, C) tensor, as PyTorch's
// F.batch_norm and the buffers of nn.BatchNorm1d/2d.
//
// Training: y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta with the batch mean and
// biased variance over the M = N*H*W elements of each channel. The running statistics,
// when given, move towards the batch: r <- (1 - f) r + f stat, using the unbiased
// variance var_B * M / (M - 1); f = momentum, or with momentum = nullopt the cumulative
// average f = 1 / num_batches_tracked (after its increment), so that after k batches
// from a reset the running stats are the plain mean of the k batch statistics (how BN
// statistics are recomputed for an averaged model).
//
// Evaluation: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta, an affine
// map per channel.
//
// Epilogue (options.relu, residual): out = relu(y + residual), in the same pass over
// memory as y where the table has the fused kernels (engine/kernels.h), else composed of
// plain ones. Backward masks the incoming gradient by out > 0 (the ReLU), hands the
// masked gradient to the residual unchanged (the sum), and differentiates y with it.
//
// Backward. Training (kernel batchnorm_backward), with xhat = (x - mean_B) * invstd_B:
//   dbeta = sum(dy),  dgamma = sum(dy * xhat),
//   dx = gamma * invstd_B / M * (M dy - sum(dy) - xhat * sum(dy * xhat)).
// Evaluation (the statistics are constants, so only the affine map is differentiated):
//   dx = dy * gamma * invstd_run,  dgamma = sum(dy * xhat_run),  dbeta = sum(dy),
// built from broadcasting elementwise ops and reductions.
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"

namespace polyak {

namespace {

const float* nullable(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }

void check_channel_vector(const Tensor& t, const char* what, int64_t C, Device device, bool written) {
  if (!t.defined()) return;
  if (t.dtype() != DType::F32)
    throw std::invalid_argument(std::string("batch_norm: ") + what + " must be float32, got " + dtype_name(t.dtype()));
  if (t.shape() != Shape{C})
    throw std::invalid_argument(std::string("batch_norm: ") + what + " must have shape [" + std::to_string(C) +
                                "], got " + shape_str(t.shape()));
  if (t.device() != device)
    throw std::invalid_argument(std::string("batch_norm: ") + what + " is on " + device_name(t.device()) +
                                ", input on " + device_name(device));
  if (written && !t.is_contiguous())
    throw std::invalid_argument(std::string("batch_norm: ") + what + " is updated in place and must be contiguous");
}

void check_counter(const Tensor& counter) {
  if (counter.dtype() != DType::I64 || counter.numel() != 1)
    throw std::invalid_argument("batch_norm: num_batches_tracked must be a one-element int64 tensor, got " +
                                std::string(dtype_name(counter.dtype())) + " " + shape_str(counter.shape()));
}

}  // namespace

Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& running_mean,
                  const Tensor& running_var, const Tensor& num_batches_tracked, const BatchNormOptions& options,
                  const Tensor& residual, const Tensor& plane_moments) {
  if (x.dtype() != DType::F32)
    throw std::invalid_argument(std::string("batch_norm: input must be float32, got ") + dtype_name(x.dtype()));
  if (x.dim() != 2 && x.dim() != 4)
    throw std::invalid_argument("batch_norm: input must be (N, C) or (N, C, H, W), got " + shape_str(x.shape()));
  const Device device = x.device();
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t HW = x.dim() == 4 ? x.size(2) * x.size(3) : 1;
  check_channel_vector(weight, "weight", C, device, false);
  check_channel_vector(bias, "bias", C, device, false);
  check_channel_vector(running_mean, "running_mean", C, device, true);
  check_channel_vector(running_var, "running_var", C, device, true);
  if (running_mean.defined() != running_var.defined())
    throw std::invalid_argument("batch_norm: running_mean and running_var must be given together");
  if (!(options.eps >= 0.0f))
    throw std::invalid_argument("batch_norm: eps must be >= 0");
  const bool tracking = running_mean.defined();
  if (!options.training && !tracking)
    throw std::invalid_argument("batch_norm: evaluation mode needs running_mean and running_var");
  if (options.training && N * HW <= 1)
    throw std::invalid_argument("batch_norm: training needs more than one value per channel, got input " +
                                shape_str(x.shape()));
  if (num_batches_tracked.defined() && num_batches_tracked.device() != device)
    throw std::invalid_argument("batch_norm: num_batches_tracked is on another device than the input");

  if (residual.defined()) {
    if (residual.dtype() != DType::F32 || residual.shape() != x.shape() || residual.device() != device)
      throw std::invalid_argument("batch_norm: the residual must be float32 " + shape_str(x.shape()) + " on " +
                                  device_name(device) + " like the input, got " + dtype_name(residual.dtype()) + " " +
                                  shape_str(residual.shape()) + " on " + device_name(residual.device()));
  }

  if (plane_moments.defined() &&
      (plane_moments.dtype() != DType::F32 || plane_moments.shape() != Shape{N, C, kPlaneMoments} ||
       plane_moments.device() != device || !plane_moments.is_contiguous()))
    throw std::invalid_argument("batch_norm: plane_moments must be contiguous float32 " +
                                shape_str(Shape{N, C, kPlaneMoments}) + " on " + device_name(device) +
                                " for input " + shape_str(x.shape()) + ", got " + dtype_name(plane_moments.dtype()) +
                                " " + shape_str(plane_moments.shape()) + " on " + device_name(plane_moments.device()));

  const BatchNormGeom geom{N, C, HW};
  const Tensor xc = x.contiguous();
  const Tensor rc = residual.defined() ? residual.contiguous() : Tensor();
  const Epilogue epilogue{nullable(rc), options.relu};
  const Tensor wc = weight.defined() ? weight.contiguous() : Tensor();
  const Tensor bc = bias.defined() ? bias.contiguous() : Tensor();
  Tensor out = Tensor::empty(x.shape(), DType::F32, device);
  const Kernels& k = kernels(device);

  if (options.training) {
    float factor = 0.0f;
    if (tracking) {
      if (num_batches_tracked.defined()) {
        check_counter(num_batches_tracked);
        k.increment_counter(num_batches_tracked.data<int64_t>());
      }
      if (options.momentum) {
        factor = *options.momentum;
      } else {
        // The cumulative average needs the count itself: the only case that reads the
        // counter back (a device sync), and it happens in BN recompute, not in training.
        if (!num_batches_tracked.defined())
          throw std::invalid_argument("batch_norm: momentum = nullopt (cumulative average) needs num_batches_tracked");
        factor = 1.0f / static_cast<float>(num_batches_tracked.item<int64_t>());
      }
    }
    Tensor save_mean = Tensor::empty({C}, DType::F32, device);
    Tensor save_invstd = Tensor::empty({C}, DType::F32, device);
    float* const rm = tracking ? running_mean.data<float>() : nullptr;
    float* const rv = tracking ? running_var.data<float>() : nullptr;
    if (k.batchnorm_forward_train_fused) {
      k.batchnorm_forward_train_fused(geom, xc.data<float>(), nullable(plane_moments), nullable(wc), nullable(bc),
                                      options.eps, factor, rm, rv, epilogue, out.data<float>(),
                                      save_mean.data<float>(), save_invstd.data<float>());
    } else {
      k.batchnorm_forward_train(geom, xc.data<float>(), nullable(wc), nullable(bc), options.eps, factor, rm, rv,
                                out.data<float>(), save_mean.data<float>(), save_invstd.data<float>());
      detail::apply_epilogue(k, epilogue, out.numel(), out.data<float>());
    }
    if (should_record({xc, wc, bc, rc})) {
      // A fused backward recomputes the ReLU's mask from the input when no residual was
      // added, and the output need not be kept; otherwise the mask comes from the output.
      const bool fused_backward = k.batchnorm_backward_fused != nullptr;
      record(out, "batch_norm", {xc, wc, bc, rc},
             [&k, fused_backward, geom, input = xc.detach(), gamma = wc.defined() ? wc.detach() : Tensor(),
              beta = bc.defined() ? bc.detach() : Tensor(), save_mean, save_invstd, relu = options.relu,
              relu_output = options.relu && (rc.defined() || !fused_backward) ? out.detach() : Tensor(),
              want_w = wc.defined() && wc.requires_grad(), want_b = bc.defined() && bc.requires_grad(),
              want_r = rc.defined() && rc.requires_grad()](const Tensor& grad) {
               const bool dy_free = grad.owns_data_alone();
               const Tensor dy = grad.contiguous();
               const Device dev = dy.device();
               // dx and the masked gradient are written in place of the saved input and of
               // dy where nothing else sees those (the walk drops grad after this call, and
               // the input is saved for this backward alone): a pass that writes where it has
               // just read saves the read of each line that a fresh buffer's stores cost.
               const auto in_place_of = [dev](const Tensor& t, bool free) {
                 return free ? t : Tensor::empty(t.shape(), DType::F32, dev);
               };
               Tensor dx = in_place_of(input, input.owns_data_alone());
               Tensor dgamma = want_w ? Tensor::empty({geom.C}, DType::F32, dev) : Tensor();
               Tensor dbeta = want_b ? Tensor::empty({geom.C}, DType::F32, dev) : Tensor();
               float* const dgamma_data = want_w ? dgamma.data<float>() : nullptr;
               float* const dbeta_data = want_b ? dbeta.data<float>() : nullptr;
               if (!fused_backward) {
                 // The ReLU's mask, then the plain backward; the residual's gradient is the
                 // masked gradient.
                 Tensor masked = dy;
                 if (relu) {
                   masked = in_place_of(dy, dy_free);
                   k.relu_backward(masked.numel(), relu_output.data<float>(), dy.data<float>(), masked.data<float>());
                 }
                 k.batchnorm_backward(geom, input.data<float>(), masked.data<float>(), nullable(gamma),
                                      save_mean.data<float>(), save_invstd.data<float>(), dx.data<float>(),
                                      dgamma_data, dbeta_data);
                 return std::vector<Tensor>{dx, dgamma, dbeta, want_r ? masked : Tensor()};
               }
               // Without the ReLU the residual's gradient is dy itself.
               const bool masked_residual = want_r && relu;
               Tensor dresidual = masked_residual ? in_place_of(dy, dy_free)
                                                  : (want_r ? dy : Tensor());
               k.batchnorm_backward_fused(geom, input.data<float>(), dy.data<float>(), nullable(gamma),
                                          nullable(beta), save_mean.data<float>(), save_invstd.data<float>(), relu,
                                          nullable(relu_output), dx.data<float>(),
                                          masked_residual ? dresidual.data<float>() : nullptr, dgamma_data,
                                          dbeta_data);
               return std::vector<Tensor>{dx, dgamma, dbeta, dresidual};
             });
    }
    return out;
  }

  if (k.batchnorm_forward_eval_fused) {
    k.batchnorm_forward_eval_fused(geom, xc.data<float>(), nullable(wc), nullable(bc), running_mean.data<float>(),
                                   running_var.data<float>(), options.eps, epilogue, out.data<float>());
  } else {
    k.batchnorm_forward_eval(geom, xc.data<float>(), nullable(wc), nullable(bc), running_mean.data<float>(),
                             running_var.data<float>(), options.eps, out.data<float>());
    detail::apply_epilogue(k, epilogue, out.numel(), out.data<float>());
  }
  if (should_record({xc, wc, bc, rc})) {
    // Snapshot the statistics: the buffers may change (a later training step) before
    // backward runs.
    const Tensor mean = running_mean.detach().clone();
    const Tensor invstd = rdiv_scalar(sqrt(add_scalar(running_var.detach(), options.eps)), 1.0f);
    const Shape channel_shape = x.dim() == 4 ? Shape{1, C, 1, 1} : Shape{1, C};
    const std::vector<int64_t> reduce_dims = x.dim() == 4 ? std::vector<int64_t>{0, 2, 3} : std::vector<int64_t>{0};
    record(out, "batch_norm_eval", {xc, wc, bc, rc},
           [input = xc.detach(), gamma = wc.defined() ? wc.detach() : Tensor(), mean, invstd, channel_shape, reduce_dims,
            relu_output = options.relu ? out.detach() : Tensor(), want_x = xc.requires_grad(),
            want_w = wc.defined() && wc.requires_grad(), want_b = bc.defined() && bc.requires_grad(),
            want_r = rc.defined() && rc.requires_grad()](const Tensor& grad) {
             Tensor dy = grad;
             if (relu_output.defined()) {
               const Tensor gc = grad.contiguous();
               dy = Tensor::empty(gc.shape(), DType::F32, gc.device());
               kernels(gc.device()).relu_backward(gc.numel(), relu_output.data<float>(), gc.data<float>(),
                                                  dy.data<float>());
             }
             Tensor dx, dgamma, dbeta;
             const Tensor s = invstd.reshape(channel_shape);
             if (want_x) dx = dy * (gamma.defined() ? gamma.reshape(channel_shape) * s : s);
             if (want_w) dgamma = sum(dy * ((input - mean.reshape(channel_shape)) * s), reduce_dims);
             if (want_b) dbeta = sum(dy, reduce_dims);
             return std::vector<Tensor>{dx, dgamma, dbeta, want_r ? dy : Tensor()};
           });
  }
  return out;
}

}  // namespace polyak
