#include "models/whitening.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/linalg.h"

namespace polyak::models {

namespace {

// S = P^T P / n over every k x k patch of `images`, in float64 (d x d, row-major).
std::vector<double> patch_second_moments(const Tensor& images, int64_t k) {
  const int64_t N = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  const int64_t d = C * k * k, rows = H - k + 1, cols = W - k + 1;
  const Tensor host = images.to(Device::CPU).contiguous();
  const float* x = host.data<float>();
  std::vector<double> sum(static_cast<size_t>(d * d), 0.0), patch(static_cast<size_t>(d));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        size_t at = 0;  // (c, dy, dx): the order of a filter's weights
        for (int64_t c = 0; c < C; ++c)
          for (int64_t dy = 0; dy < k; ++dy)
            for (int64_t dx = 0; dx < k; ++dx) patch[at++] = x[((n * C + c) * H + i + dy) * W + j + dx];
        for (int64_t a = 0; a < d; ++a)
          for (int64_t b = a; b < d; ++b) sum[static_cast<size_t>(a * d + b)] += patch[static_cast<size_t>(a)] * patch[static_cast<size_t>(b)];
      }
  const double count = static_cast<double>(N * rows * cols);
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = a; b < d; ++b)
      sum[static_cast<size_t>(b * d + a)] = sum[static_cast<size_t>(a * d + b)] /= count;
  return sum;
}

}  // namespace

Tensor whitening_filters(const Tensor& images, int64_t kernel, double eps) {
  if (images.dim() != 4 || kernel < 1 || images.size(2) < kernel || images.size(3) < kernel)
    throw std::invalid_argument("whitening_filters: expected (N, C, H, W) images of at least " + std::to_string(kernel) +
                                " x " + std::to_string(kernel) + " pixels, got " + shape_str(images.shape()));
  const int64_t C = images.size(1), d = C * kernel * kernel;
  const linalg::SymmetricEigen eigen = linalg::symmetric_eigen(patch_second_moments(images, kernel), static_cast<int>(d));
  std::vector<float> filters(static_cast<size_t>(2 * d * d));
  for (int64_t i = 0; i < d; ++i) {
    const int64_t source = d - 1 - i;  // LAPACK's order is ascending: filter 0 has the largest
    const double scale = 1.0 / std::sqrt(eigen.values[static_cast<size_t>(source)] + eps);
    for (int64_t j = 0; j < d; ++j) {
      const double w = eigen.vectors[static_cast<size_t>(source * d + j)] * scale;
      filters[static_cast<size_t>(i * d + j)] = static_cast<float>(w);
      filters[static_cast<size_t>((d + i) * d + j)] = static_cast<float>(-w);
    }
  }
  return Tensor::from_vector(filters, {2 * d, C, kernel, kernel});
}

}  // namespace polyak::models
