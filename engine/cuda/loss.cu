// Softmax and cross-entropy on the GPU (the CPU file: engine/cpu/loss.cpp, which states
// the math). One warp per row: the lanes stride over the columns, and the row max and
// the row sums (in double, as on the CPU) are combined with fixed warp shuffles. The
// mean over rows is one block summing the per-row losses in a fixed order.
//
// Labels out of [0, cols) cannot throw inside a kernel. The kernels skip such a row and
// record the smallest bad row index in a device word (atomicMin: the first bad row
// wins whatever the timing); after the kernel the host reads the word back (a
// synchronisation) and throws std::out_of_range naming the row and the label, with the
// CPU's message.
#include <climits>
#include <stdexcept>
#include <string>

#include "engine/cuda/common.cuh"

namespace polyak {

using namespace cuda_detail;

namespace {

constexpr int kRowsPerBlock = kThreads / 32;
constexpr unsigned long long kNoError = ULLONG_MAX;

struct RowStats {
  float max;
  float lse;  // log sum exp of the row
};

// Every lane of the warp gets the row's max and log-sum-exp, computed as the CPU does:
// lse = m + float(log(sum_j exp(double(x_j - m)))).
__device__ inline RowStats row_stats(const float* xr, int64_t cols, int lane) {
  float m = -INFINITY;
  for (int64_t j = lane; j < cols; j += 32) m = fmaxf(m, xr[j]);
  m = warp_max(m);
  double total = 0.0;
  for (int64_t j = lane; j < cols; j += 32) total += exp(static_cast<double>(xr[j] - m));
  total = __shfl_sync(0xffffffffu, warp_sum(total), 0);
  return {m, m + static_cast<float>(log(total))};
}

__global__ void log_softmax_forward_kernel(int64_t rows, int64_t cols, const float* x, float* y) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;  // a whole warp leaves together
  const float* xr = x + r * cols;
  const RowStats s = row_stats(xr, cols, lane);
  float* yr = y + r * cols;
  for (int64_t j = lane; j < cols; j += 32) yr[j] = xr[j] - s.lse;
}

__global__ void log_softmax_backward_kernel(int64_t rows, int64_t cols, const float* y, const float* dy, float* dx) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* yr = y + r * cols;
  const float* dyr = dy + r * cols;
  double total = 0.0;
  for (int64_t j = lane; j < cols; j += 32) total += dyr[j];
  const float s = static_cast<float>(__shfl_sync(0xffffffffu, warp_sum(total), 0));
  float* dxr = dx + r * cols;
  for (int64_t j = lane; j < cols; j += 32) dxr[j] = dyr[j] - __fmul_rn(expf(yr[j]), s);
}

__global__ void cross_entropy_rows_kernel(int64_t rows, int64_t cols, const float* logits, const int64_t* labels,
                                          double on, double spread, float* log_probs, double* row_loss,
                                          unsigned long long* error) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* xr = logits + r * cols;
  const RowStats s = row_stats(xr, cols, lane);
  float* lp = log_probs + r * cols;
  double total = 0.0;
  for (int64_t j = lane; j < cols; j += 32) {
    const float v = xr[j] - s.lse;
    lp[j] = v;
    total += v;
  }
  total = warp_sum(total);
  if (lane == 0) {
    const int64_t label = labels[r];
    if (label < 0 || label >= cols) {
      atomicMin(error, static_cast<unsigned long long>(r));
      row_loss[r] = 0.0;
    } else {
      const float at_label = xr[label] - s.lse;  // the value lp[label] holds
      row_loss[r] = -(on * at_label + (spread != 0.0 ? spread * total : 0.0));
    }
  }
}

__global__ void mean_kernel(int64_t rows, const double* row_loss, float* loss) {
  double acc = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) acc += row_loss[r];
  const double total = block_sum<kThreads>(acc);
  if (threadIdx.x == 0) loss[0] = rows > 0 ? static_cast<float>(total / static_cast<double>(rows)) : 0.0f;
}

__global__ void cross_entropy_backward_kernel(int64_t rows, int64_t cols, const float* log_probs,
                                              const int64_t* labels, float on, float spread, const float* dloss,
                                              float* dlogits, unsigned long long* error) {
  const int64_t n = rows * cols;
  const float scale = dloss[0] / static_cast<float>(rows);
  POLYAK_GRID_LOOP(i, n) {
    const int64_t r = i / cols, j = i - r * cols;
    const int64_t label = labels[r];
    float d = __fmul_rn(expf(log_probs[i]) - spread, scale);
    if (j == label) d -= __fmul_rn(on, scale);
    dlogits[i] = d;
    if (j == 0 && (label < 0 || label >= cols)) atomicMin(error, static_cast<unsigned long long>(r));
  }
}

}  // namespace

void CudaBackend::check_labels_after(const int64_t* labels, int64_t cols) {
  POLYAK_CUDA(cudaMemcpyAsync(label_error_host_, label_error_, sizeof(unsigned long long), cudaMemcpyDeviceToHost,
                              stream_));
  POLYAK_CUDA(cudaStreamSynchronize(stream_));
  const unsigned long long row = *label_error_host_;
  if (row == kNoError) return;
  POLYAK_CUDA(cudaMemsetAsync(label_error_, 0xFF, sizeof(unsigned long long), stream_));
  int64_t label = 0;
  copy_to_host(&label, labels + row, sizeof label);
  throw std::out_of_range("cross_entropy: label " + std::to_string(label) + " in row " + std::to_string(row) +
                          " is outside [0, " + std::to_string(cols) + ")");
}

void CudaBackend::log_softmax_forward(int64_t rows, int64_t cols, const float* x, float* y) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  log_softmax_forward_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream_>>>(rows, cols, x, y);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::log_softmax_backward(int64_t rows, int64_t cols, const float* y, const float* dy, float* dx) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  log_softmax_backward_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream_>>>(rows, cols, y, dy, dx);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::cross_entropy_forward(int64_t rows, int64_t cols, const float* logits, const int64_t* labels,
                                        float smoothing, float* log_probs, float* loss) {
  if (rows <= 0 || cols <= 0) {
    fill(loss, 1, 0.0f);
    return;
  }
  const double on = 1.0 - smoothing, spread = static_cast<double>(smoothing) / static_cast<double>(cols);
  Scratch row_loss(*this, static_cast<size_t>(rows) * sizeof(double));
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  cross_entropy_rows_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream_>>>(
      rows, cols, logits, labels, on, spread, log_probs, row_loss.as<double>(), label_error_);
  POLYAK_CUDA_LAUNCHED();
  mean_kernel<<<1, kThreads, 0, stream_>>>(rows, row_loss.as<double>(), loss);
  POLYAK_CUDA_LAUNCHED();
  check_labels_after(labels, cols);
}

void CudaBackend::cross_entropy_backward(int64_t rows, int64_t cols, const float* log_probs, const int64_t* labels,
                                         float smoothing, const float* dloss, float* dlogits) {
  if (rows <= 0 || cols <= 0) return;
  const float on = 1.0f - smoothing, spread = smoothing / static_cast<float>(cols);
  const int64_t n = rows * cols;
  cross_entropy_backward_kernel<<<grid_for(n), kThreads, 0, stream_>>>(rows, cols, log_probs, labels, on, spread,
                                                                        dloss, dlogits, label_error_);
  POLYAK_CUDA_LAUNCHED();
  check_labels_after(labels, cols);
}

}  // namespace polyak
