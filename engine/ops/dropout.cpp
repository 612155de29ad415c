// dropout: while training, zero each element with probability p and scale the
// survivors by 1 / (1 - p) (inverted dropout, so evaluation is the identity):
//   y = x * keep / (1 - p),  keep_i ~ Bernoulli(1 - p)
// Backward reuses the saved mask: dx = dy * keep / (1 - p).
//
// The mask comes from the project's Rng: the op reserves ceil(n / 4) Philox blocks and
// the kernel draws word i for element i itself, so a seed gives the same mask on every
// device and the Rng state afterwards does not depend on where the op ran.
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/rng.h"

namespace polyak {

Tensor dropout(const Tensor& x, float p, bool training, Rng& rng) {
  if (!(p >= 0.0f && p < 1.0f))
    throw std::invalid_argument("dropout: p must be in [0, 1), got " + std::to_string(p));
  if (!training || p == 0.0f) return x;
  if (x.dtype() != DType::F32)
    throw std::invalid_argument(std::string("dropout: input must be float32, got ") + dtype_name(x.dtype()));

  const int64_t n = x.numel();
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), DType::F32, x.device());
  Tensor keep = Tensor::empty(x.shape(), DType::U8, x.device());
  const uint64_t first_block = rng.reserve_blocks(static_cast<uint64_t>((n + 3) / 4));
  kernels(x.device()).dropout_forward(n, xc.data<float>(), p, rng.seed(), first_block, out.data<float>(),
                                      keep.data<uint8_t>());
  if (should_record({xc})) {
    record(out, "dropout", {xc}, [keep, p](const Tensor& grad) {
      const Tensor dy = grad.contiguous();
      Tensor dx = Tensor::empty(keep.shape(), DType::F32, keep.device());
      kernels(dx.device()).dropout_backward(dx.numel(), dy.data<float>(), keep.data<uint8_t>(), p, dx.data<float>());
      return std::vector<Tensor>{dx};
    });
  }
  return out;
}

}  // namespace polyak
