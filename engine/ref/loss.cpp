// Reference softmax and cross-entropy over the rows of a (rows, cols) matrix.
//
// log_softmax, in the stable form with m = max_j x_j:
//   y_i = x_i - m - log(sum_j exp(x_j - m))     (no exponent is positive)
// Backward, since dy_i/dx_k = delta_ik - softmax_k:  dx_k = dy_k - exp(y_k) * sum_i dy_i.
// Cross-entropy against the smoothed target t = (1 - s) onehot(label) + s / C:
//   loss = mean over rows of -sum_c t_c log p_c
// Backward: d loss / d logit_rc = (p_rc - t_rc) / rows, times the upstream dloss.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/ref/kernels.h"

namespace polyak::ref {

void check_labels(int64_t rows, int64_t cols, const int64_t* labels) {
  for (int64_t r = 0; r < rows; ++r)
    if (labels[r] < 0 || labels[r] >= cols)
      throw std::out_of_range("cross_entropy: label " + std::to_string(labels[r]) + " in row " + std::to_string(r) +
                              " is outside [0, " + std::to_string(cols) + ")");
}

void log_softmax_forward(int64_t rows, int64_t cols, const float* x, float* y) {
  for (int64_t r = 0; r < rows && cols > 0; ++r) {
    const float* xr = x + r * cols;
    const float m = *std::max_element(xr, xr + cols);
    double total = 0;
    for (int64_t j = 0; j < cols; ++j) total += std::exp(static_cast<double>(xr[j]) - m);
    const double log_total = std::log(total);
    for (int64_t j = 0; j < cols; ++j) y[r * cols + j] = static_cast<float>(xr[j] - m - log_total);
  }
}

void log_softmax_backward(int64_t rows, int64_t cols, const float* y, const float* dy, float* dx) {
  for (int64_t r = 0; r < rows; ++r) {
    double total = 0;
    for (int64_t j = 0; j < cols; ++j) total += dy[r * cols + j];
    for (int64_t j = 0; j < cols; ++j)
      dx[r * cols + j] = static_cast<float>(dy[r * cols + j] - std::exp(static_cast<double>(y[r * cols + j])) * total);
  }
}

void cross_entropy_forward(int64_t rows, int64_t cols, const float* logits, const int64_t* labels, float smoothing,
                           float* log_probs, float* loss) {
  check_labels(rows, cols, labels);
  log_softmax_forward(rows, cols, logits, log_probs);
  const double on = 1.0 - smoothing, spread = static_cast<double>(smoothing) / static_cast<double>(cols);
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* lp = log_probs + r * cols;
    double all = 0;
    for (int64_t j = 0; j < cols; ++j) all += lp[j];
    total -= on * lp[labels[r]] + spread * all;
  }
  loss[0] = rows > 0 ? static_cast<float>(total / static_cast<double>(rows)) : 0.0f;
}

void cross_entropy_backward(int64_t rows, int64_t cols, const float* log_probs, const int64_t* labels,
                            float smoothing, const float* dloss, float* dlogits) {
  check_labels(rows, cols, labels);
  const double scale = rows > 0 ? static_cast<double>(dloss[0]) / static_cast<double>(rows) : 0.0;
  const double spread = static_cast<double>(smoothing) / static_cast<double>(cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const double target = (j == labels[r] ? 1.0 - smoothing : 0.0) + spread;
      dlogits[r * cols + j] = static_cast<float>((std::exp(static_cast<double>(log_probs[r * cols + j])) - target) * scale);
    }
}

}  // namespace polyak::ref
