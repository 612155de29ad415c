// Softmax and cross-entropy kernels on the CPU, one row of a (rows, cols) matrix at a
// time, rows spread over the threads.
//
// log_softmax, stable form: with m = max_j x_j,
//   y_i = x_i - m - log(sum_j exp(x_j - m))
// (every exponent is <= 0, so nothing overflows). Backward, since dy_i/dx_k =
// delta_ik - softmax_k:  dx_k = dy_k - exp(y_k) * sum_i dy_i.
//
// Cross-entropy against the smoothed target t = (1 - s) onehot(label) + s / C:
//   loss_row = -sum_c t_c log p_c = -(1 - s) log p_label - (s / C) sum_c log p_c
//   loss = mean over rows.
// Backward: d loss / d logit_rc = (p_rc - t_rc) / N, times the upstream gradient.
// Row losses are summed in row order, so the loss does not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"
#include "engine/ref/kernels.h"

namespace polyak {

namespace {

void log_softmax_row(int64_t cols, const float* x, float* y) {
  float m = x[0];
  for (int64_t j = 1; j < cols; ++j) m = std::max(m, x[j]);
  double total = 0;
  for (int64_t j = 0; j < cols; ++j) total += std::exp(static_cast<double>(x[j] - m));
  const float lse = m + static_cast<float>(std::log(total));
  for (int64_t j = 0; j < cols; ++j) y[j] = x[j] - lse;
}

}  // namespace

void cpu::log_softmax_forward(int64_t rows, int64_t cols, const float* x, float* y) {
  if (cols <= 0) return;
  parallel_for(rows, 8 * cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) log_softmax_row(cols, x + r * cols, y + r * cols);
  });
}

void cpu::log_softmax_backward(int64_t rows, int64_t cols, const float* y, const float* dy, float* dx) {
  parallel_for(rows, 8 * cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* yr = y + r * cols;
      const float* dyr = dy + r * cols;
      float* dxr = dx + r * cols;
      double total = 0;
      for (int64_t j = 0; j < cols; ++j) total += dyr[j];
      const float s = static_cast<float>(total);
      for (int64_t j = 0; j < cols; ++j) dxr[j] = dyr[j] - std::exp(yr[j]) * s;
    }
  });
}

void cpu::cross_entropy_forward(int64_t rows, int64_t cols, const float* logits, const int64_t* labels,
                                       float smoothing, float* log_probs, float* loss) {
  ref::check_labels(rows, cols, labels);  // before the parallel region: nothing may throw inside it
  std::vector<double> row_loss(static_cast<size_t>(rows));
  const double on = 1.0 - smoothing, spread = static_cast<double>(smoothing) / static_cast<double>(cols);
  parallel_for(rows, 8 * cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* lp = log_probs + r * cols;
      log_softmax_row(cols, logits + r * cols, lp);
      double total = 0;
      if (spread != 0.0)
        for (int64_t j = 0; j < cols; ++j) total += lp[j];
      row_loss[r] = -(on * lp[labels[r]] + spread * total);
    }
  });
  double total = 0;
  for (double v : row_loss) total += v;
  loss[0] = rows > 0 ? static_cast<float>(total / static_cast<double>(rows)) : 0.0f;
}

void cpu::cross_entropy_backward(int64_t rows, int64_t cols, const float* log_probs, const int64_t* labels,
                                        float smoothing, const float* dloss, float* dlogits) {
  ref::check_labels(rows, cols, labels);
  const float scale = rows > 0 ? dloss[0] / static_cast<float>(rows) : 0.0f;
  const float on = 1.0f - smoothing, spread = smoothing / static_cast<float>(cols);
  parallel_for(rows, 8 * cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* lp = log_probs + r * cols;
      float* d = dlogits + r * cols;
      for (int64_t j = 0; j < cols; ++j) d[j] = (std::exp(lp[j]) - spread) * scale;
      d[labels[r]] -= on * scale;
    }
  });
}

}  // namespace polyak
