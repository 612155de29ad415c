// log_softmax and cross_entropy: the classifier's last two steps, fused for stability.
//
// log_softmax(x)_i = x_i - log sum_j exp(x_j), over the last dim of a 2-D tensor,
// computed after subtracting the row max. Backward: dx = dy - softmax(x) * sum(dy),
// with softmax(x) = exp(y) read back from the saved output.
//
// cross_entropy(logits, labels, s) = mean_n -sum_c t_nc log softmax(logits)_nc with
// the label-smoothed target t_n = (1 - s) onehot(label_n) + s / C (PyTorch's
// F.cross_entropy(..., label_smoothing=s)). The forward kernel keeps the
// log-probabilities; backward is dlogits = (softmax - t) * dloss / N, with dloss the
// upstream gradient read on the device, so a training step never waits for the host.
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"

namespace polyak {

Tensor log_softmax(const Tensor& x) {
  if (x.dtype() != DType::F32)
    throw std::invalid_argument(std::string("log_softmax: input must be float32, got ") + dtype_name(x.dtype()));
  if (x.dim() != 2)
    throw std::invalid_argument("log_softmax: input must be 2-D (rows, classes), got " + shape_str(x.shape()));
  const int64_t rows = x.size(0), cols = x.size(1);
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), DType::F32, x.device());
  kernels(x.device()).log_softmax_forward(rows, cols, xc.data<float>(), out.data<float>());
  if (should_record({xc})) {
    record(out, "log_softmax", {xc}, [y = out.detach()](const Tensor& grad) {
      const Tensor dy = grad.contiguous();
      Tensor dx = Tensor::empty(y.shape(), DType::F32, y.device());
      kernels(y.device()).log_softmax_backward(y.size(0), y.size(1), y.data<float>(), dy.data<float>(),
                                               dx.data<float>());
      return std::vector<Tensor>{dx};
    });
  }
  return out;
}

Tensor cross_entropy(const Tensor& logits, const Tensor& labels, float label_smoothing) {
  if (logits.dtype() != DType::F32)
    throw std::invalid_argument(std::string("cross_entropy: logits must be float32, got ") +
                                dtype_name(logits.dtype()));
  if (logits.dim() != 2 || logits.size(0) == 0 || logits.size(1) == 0)
    throw std::invalid_argument("cross_entropy: logits must be a non-empty (N, classes) matrix, got " +
                                shape_str(logits.shape()));
  const int64_t rows = logits.size(0), cols = logits.size(1);
  if (labels.dtype() != DType::I64)
    throw std::invalid_argument(std::string("cross_entropy: labels must be int64, got ") + dtype_name(labels.dtype()));
  if (labels.shape() != Shape{rows})
    throw std::invalid_argument("cross_entropy: labels must have shape [" + std::to_string(rows) + "] for logits " +
                                shape_str(logits.shape()) + ", got " + shape_str(labels.shape()));
  if (labels.device() != logits.device())
    throw std::invalid_argument(std::string("cross_entropy: labels are on ") + device_name(labels.device()) +
                                ", logits on " + device_name(logits.device()));
  if (!(label_smoothing >= 0.0f && label_smoothing <= 1.0f))
    throw std::invalid_argument("cross_entropy: label_smoothing must be in [0, 1], got " +
                                std::to_string(label_smoothing));

  const Device device = logits.device();
  const Tensor xc = logits.contiguous();
  const Tensor lc = labels.contiguous();
  Tensor log_probs = Tensor::empty({rows, cols}, DType::F32, device);
  Tensor out = Tensor::empty({}, DType::F32, device);
  kernels(device).cross_entropy_forward(rows, cols, xc.data<float>(), lc.data<int64_t>(), label_smoothing,
                                        log_probs.data<float>(), out.data<float>());
  if (should_record({xc})) {
    record(out, "cross_entropy", {xc}, [log_probs, lc, label_smoothing](const Tensor& grad) {
      const Tensor dloss = grad.contiguous();
      Tensor dx = Tensor::empty(log_probs.shape(), DType::F32, log_probs.device());
      kernels(dx.device()).cross_entropy_backward(log_probs.size(0), log_probs.size(1), log_probs.data<float>(),
                                                  lc.data<int64_t>(), label_smoothing, dloss.data<float>(),
                                                  dx.data<float>());
      return std::vector<Tensor>{dx};
    });
  }
  return out;
}

}  // namespace polyak
