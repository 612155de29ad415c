// The fused epilogue of engine/kernels.h on the CPU, after a per-channel affine map:
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

// One loop per case, so that none tests per element what it does. Rows of x are
// x_stride apart; those of residual and y follow each other.
template <bool RESIDUAL, bool RELU>
void affine_epilogue_rows(int64_t rows, int64_t n, const float* x, int64_t x_stride, const float* residual,
                          float scale, float shift, float* y) {
  for (int64_t r = 0; r < rows; ++r, x += x_stride, y += n, residual += RESIDUAL ? n : 0) {
    for (int64_t i = 0; i < n; ++i) {
      float v = scale * x[i] + shift;
      if constexpr (RESIDUAL) v += residual[i];
      if constexpr (RELU) v = v > 0.0f ? v : 0.0f;
      y[i] = v;
    }
  }
}

}  // namespace detail

// The epilogue over `rows` rows of n values: x's rows x_stride floats apart, y's and the
// residual's contiguous. Short rows (8 to 32 floats on a ResNet's maps) cost little
// more than their loop's setup, so a caller with several passes them in one call: the
// case is chosen once for all of them.
inline void affine_epilogue(int64_t rows, int64_t n, const float* x, int64_t x_stride, float scale, float shift,
                            const float* residual, bool relu, float* y) {
  if (residual) {
    if (relu) {
      detail::affine_epilogue_rows<true, true>(rows, n, x, x_stride, residual, scale, shift, y);
    } else {
      detail::affine_epilogue_rows<true, false>(rows, n, x, x_stride, residual, scale, shift, y);
    }
  } else if (relu) {
    detail::affine_epilogue_rows<false, true>(rows, n, x, x_stride, residual, scale, shift, y);
  } else {
    detail::affine_epilogue_rows<false, false>(rows, n, x, x_stride, residual, scale, shift, y);
  }
}

// One row of n values; residual: this row's residual values, or null for none.
inline void affine_epilogue(int64_t n, const float* x, float scale, float shift, const float* residual, bool relu,
                            float* y) {
  affine_epilogue(1, n, x, n, scale, shift, residual, relu, y);
}

}  // namespace polyak::cpu
