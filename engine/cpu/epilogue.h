// The fused epilogue of engine/backend.h on the CPU, after a per-channel affine map:
//
//   y[i] = act(scale * x[i] + shift (+ residual[i])),   act = ReLU or the identity
//
// over one row of n values. BatchNorm applies it with the scale and shift of its
// statistics, the convolution's forward with scale 1 and its bias as the shift, as it
// copies each output row out of its wide buffer. x and y may be the same row.
#pragma once

#include <cstdint>

namespace polyak::cpu {

namespace detail {

// One loop per case, so that none tests per element what it does.
template <bool RESIDUAL, bool RELU>
void affine_epilogue_row(int64_t n, const float* x, const float* residual, float scale, float shift, float* y) {
  for (int64_t i = 0; i < n; ++i) {
    float v = scale * x[i] + shift;
    if constexpr (RESIDUAL) v += residual[i];
    if constexpr (RELU) v = v > 0.0f ? v : 0.0f;
    y[i] = v;
  }
}

}  // namespace detail

// residual: this row's residual values, or null for none.
inline void affine_epilogue(int64_t n, const float* x, float scale, float shift, const float* residual, bool relu,
                            float* y) {
  if (residual) {
    if (relu) {
      detail::affine_epilogue_row<true, true>(n, x, residual, scale, shift, y);
    } else {
      detail::affine_epilogue_row<true, false>(n, x, residual, scale, shift, y);
    }
  } else if (relu) {
    detail::affine_epilogue_row<false, true>(n, x, residual, scale, shift, y);
  } else {
    detail::affine_epilogue_row<false, false>(n, x, residual, scale, shift, y);
  }
}

}  // namespace polyak::cpu
