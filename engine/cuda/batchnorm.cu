// BatchNorm on the GPU with our own kernels (the CPU file: engine/cpu/batchnorm.cpp,
// which states the math). Element (n, c, s) of the (N, C, HW) input sits at
// x[(n * C + c) * HW + s]; channel c owns its M = N * HW elements.
//
// Statistics are deterministic two-pass reductions, in double as on the CPU:
//   1. The M elements of each channel are cut into S segments (enough blocks to fill
//      the GPU); block (c, segment) sums its segment with a fixed tree and writes the
//      sums to a partial buffer.
//   2. One thread per channel adds its S partials in order and derives everything per
//      channel: the statistics, the running-stat update, and the coefficients of the
//      per-element pass that follows.
//   3. One thread per element applies the coefficients: y = act(scale * x + shift + r)
//      in training and evaluation (the fused epilogue: residual r and ReLU when given),
//      dx = k g + u x + v in backward (float products and sums rounded in the CPU's
//      order, no fused multiply-add).
// Backward reads g = dy, or after a fused ReLU dy masked by y > 0, with y read back (when
// a residual was added) or recomputed from x with the forward's coefficients, which both
// directions derive from the saved float statistics (train_affine); pass 1 also writes
// g out as the residual's gradient when one is wanted, and pass 3 then reads it there.
// The forward sums are of x - K and (x - K)^2 with K = the channel's first element, a
// shift that keeps E[(x-K)^2] - E[x-K]^2 free of cancellation when |mean| >> std:
//   mean = K + S1 / M,   var = (S2 - S1^2 / M) / M   (biased),
//   running_mean = (1 - f) running_mean + f mean,
//   running_var  = (1 - f) running_var  + f var * M / (M - 1)   (unbiased),
// with f the momentum or, in the cumulative mode that BN recompute uses,
// 1 / num_batches_tracked (the op passes it as `factor`).
#include <limits>
#include <stdexcept>

#include "engine/cuda/common.cuh"

namespace polyak {

using namespace cuda_detail;

namespace {

// A channel's affine map y = scale * x + shift in the training forward, from the saved
// (float) statistics, as on the CPU.
struct ChannelAffine {
  float scale, shift;
};

__device__ inline ChannelAffine train_affine(uint32_t c, const float* gamma, const float* beta, float mean,
                                             float invstd) {
  const double scale = (gamma ? gamma[c] : 1.0) * static_cast<double>(invstd);
  return {static_cast<float>(scale), static_cast<float>((beta ? beta[c] : 0.0) - static_cast<double>(mean) * scale)};
}

// The gradient reaching the affine map at element `at`: dy, or after a fused ReLU dy
// where the output was positive (read from relu_output, or recomputed from x).
struct GradMask {
  bool relu;
  const float* relu_output;  // null: recompute from x
};

__device__ inline float masked_grad(const float* x, const float* dy, GradMask mask, ChannelAffine forward, size_t at) {
  if (!mask.relu) return dy[at];
  const bool positive = mask.relu_output ? mask.relu_output[at] > 0.0f
                                         : __fadd_rn(__fmul_rn(forward.scale, x[at]), forward.shift) > 0.0f;
  return positive ? dy[at] : 0.0f;
}

// Pass 1. Forward: sums of d = x - K and d^2. Backward: sums of g and g * xhat.
template <bool BACKWARD>
__global__ void bn_partial_kernel(const float* x, const float* dy, GradMask mask, const float* gamma,
                                  const float* beta, const float* save_mean, const float* save_invstd, uint32_t C,
                                  uint32_t HW, uint32_t M, uint32_t chunk, uint32_t S, double* partial,
                                  float* dresidual) {
  const uint32_t c = blockIdx.x / S, seg = blockIdx.x % S;
  const uint32_t begin = seg * chunk, end = min(M, begin + chunk);
  double shift = 0.0, invstd = 0.0;
  ChannelAffine forward{};
  if (BACKWARD) {
    shift = save_mean[c];
    invstd = save_invstd[c];
    forward = train_affine(c, gamma, beta, save_mean[c], save_invstd[c]);
  } else {
    shift = x[static_cast<size_t>(c) * HW];
  }
  double a = 0.0, b = 0.0;
  for (uint32_t m = begin + threadIdx.x; m < end; m += kThreads) {
    const uint32_t n = m / HW, s = m - n * HW;
    const size_t at = (static_cast<size_t>(n) * C + c) * HW + s;
    if (BACKWARD) {
      const float gf = masked_grad(x, dy, mask, forward, at);
      if (dresidual) dresidual[at] = gf;
      const double g = gf;
      a += g;
      b += g * ((x[at] - shift) * invstd);
    } else {
      const double d = x[at] - shift;
      a += d;
      b += d * d;
    }
  }
  a = block_sum<kThreads>(a);
  b = block_sum<kThreads>(b);
  if (threadIdx.x == 0) {
    partial[2 * (static_cast<size_t>(c) * S + seg)] = a;
    partial[2 * (static_cast<size_t>(c) * S + seg) + 1] = b;
  }
}

__device__ inline void channel_sums(const double* partial, uint32_t c, uint32_t S, double& a, double& b) {
  a = 0.0;
  b = 0.0;
  for (uint32_t s = 0; s < S; ++s) {
    a += partial[2 * (static_cast<size_t>(c) * S + s)];
    b += partial[2 * (static_cast<size_t>(c) * S + s) + 1];
  }
}

// Pass 2 of the training forward: statistics, saves, running stats, scale and shift.
__global__ void bn_train_finalize_kernel(const float* x, const double* partial, uint32_t C, uint32_t HW, uint32_t M,
                                         uint32_t S, const float* gamma, const float* beta, float eps, float factor,
                                         float* running_mean, float* running_var, float* save_mean,
                                         float* save_invstd, float* coef) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double s1, s2;
  channel_sums(partial, c, S, s1, s2);
  const double shift = M > 0 ? x[static_cast<size_t>(c) * HW] : 0.0;
  const double m = static_cast<double>(M);
  const double mean = M > 0 ? shift + s1 / m : 0.0;
  const double sq = M > 0 ? fmax(s2 - s1 * s1 / m, 0.0) : 0.0;  // sum of (x - mean)^2
  const double var = M > 0 ? sq / m : 0.0;
  const double invstd = 1.0 / sqrt(var + static_cast<double>(eps));
  save_mean[c] = static_cast<float>(mean);
  save_invstd[c] = static_cast<float>(invstd);
  const ChannelAffine forward = train_affine(c, gamma, beta, save_mean[c], save_invstd[c]);
  coef[2 * c] = forward.scale;
  coef[2 * c + 1] = forward.shift;
  if (running_mean && running_var) {
    const double unbiased = M > 1 ? sq / (m - 1.0) : var;
    const double f = factor;
    running_mean[c] = static_cast<float>((1.0 - f) * running_mean[c] + f * mean);
    running_var[c] = static_cast<float>((1.0 - f) * running_var[c] + f * unbiased);
  }
}

__global__ void bn_eval_coef_kernel(uint32_t C, const float* gamma, const float* beta, const float* running_mean,
                                    const float* running_var, float eps, float* coef) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const double invstd = 1.0 / sqrt(static_cast<double>(running_var[c]) + static_cast<double>(eps));
  const double scale = (gamma ? gamma[c] : 1.0) * invstd;
  coef[2 * c] = static_cast<float>(scale);
  coef[2 * c + 1] = static_cast<float>((beta ? beta[c] : 0.0) - running_mean[c] * scale);
}

// Pass 2 of backward: dgamma, dbeta, the coefficients of dx = k g + u x + v and the
// forward's scale and shift (for a ReLU mask recomputed from x): 5 floats per channel.
__global__ void bn_backward_finalize_kernel(const double* partial, uint32_t C, uint32_t M, uint32_t S,
                                            const float* gamma, const float* beta, const float* save_mean,
                                            const float* save_invstd, float* dgamma, float* dbeta, float* coef) {
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double sum_dy, sum_dy_xhat;
  channel_sums(partial, c, S, sum_dy, sum_dy_xhat);
  if (dgamma) dgamma[c] = static_cast<float>(sum_dy_xhat);
  if (dbeta) dbeta[c] = static_cast<float>(sum_dy);
  const double mean = save_mean[c], invstd = save_invstd[c];
  const double inv_m = M > 0 ? 1.0 / static_cast<double>(M) : 0.0;
  const double k = (gamma ? gamma[c] : 1.0) * invstd;
  const double a = sum_dy * inv_m, b = sum_dy_xhat * inv_m;
  coef[5 * c] = static_cast<float>(k);
  coef[5 * c + 1] = static_cast<float>(-k * b * invstd);
  coef[5 * c + 2] = static_cast<float>(k * (b * invstd * mean - a));
  const ChannelAffine forward = train_affine(c, gamma, beta, save_mean[c], save_invstd[c]);
  coef[5 * c + 3] = forward.scale;
  coef[5 * c + 4] = forward.shift;
}

// Pass 3: y = act(scale * x + shift + r) per channel (coef holds scale, shift per channel).
template <class Index>
__global__ void bn_affine_kernel(int64_t total, Index C, Index HW, const float* x, const float* coef,
                                 const float* residual, bool relu, float* y) {
  POLYAK_GRID_LOOP(i, total) {
    const Index c = (static_cast<Index>(i) / HW) % C;
    float v = __fadd_rn(__fmul_rn(coef[2 * c], x[i]), coef[2 * c + 1]);
    if (residual) v = __fadd_rn(v, residual[i]);
    y[i] = relu && !(v > 0.0f) ? 0.0f : v;
  }
}

// Pass 3 of backward: dx = k g + u x + v, g read from dresidual when pass 1 wrote it there.
template <class Index>
__global__ void bn_backward_apply_kernel(int64_t total, Index C, Index HW, const float* x, const float* dy,
                                         GradMask mask, const float* dresidual, const float* coef, float* dx) {
  POLYAK_GRID_LOOP(i, total) {
    const Index c = (static_cast<Index>(i) / HW) % C;
    const size_t at = static_cast<size_t>(i);
    const float g = dresidual ? dresidual[at] : masked_grad(x, dy, mask, {coef[5 * c + 3], coef[5 * c + 4]}, at);
    dx[i] = __fadd_rn(__fadd_rn(__fmul_rn(coef[5 * c], g), __fmul_rn(coef[5 * c + 1], x[i])), coef[5 * c + 2]);
  }
}

struct Plan {
  uint32_t C, HW, M, S, chunk;
  int64_t total;
  bool small;  // total < 2^32: 32-bit element indices
};

Plan plan_for(const BatchNormGeom& g, int sm_count) {
  const int64_t M = g.N * g.HW;
  constexpr int64_t limit = std::numeric_limits<uint32_t>::max();
  if (M >= limit || g.C >= limit || g.HW >= limit)
    throw std::invalid_argument("batchnorm: more than 2^32 values per channel are not supported on the GPU");
  Plan p{};
  p.C = static_cast<uint32_t>(g.C);
  p.HW = static_cast<uint32_t>(g.HW);
  p.M = static_cast<uint32_t>(M);
  p.total = g.N * g.C * g.HW;
  p.small = p.total < limit;
  const int64_t target = 4 * static_cast<int64_t>(sm_count);
  int64_t S = std::min<int64_t>((M + 1023) / 1024, std::max<int64_t>(1, (target + g.C - 1) / g.C));
  S = std::max<int64_t>(S, 1);
  const int64_t chunk = (M + S - 1) / S;
  S = chunk > 0 ? (M + chunk - 1) / chunk : 1;
  p.S = static_cast<uint32_t>(std::max<int64_t>(S, 1));
  p.chunk = static_cast<uint32_t>(std::max<int64_t>(chunk, 1));
  return p;
}

unsigned channel_blocks(uint32_t C) { return (C + kThreads - 1) / kThreads; }

}  // namespace

// The statistics are summed from x on the GPU: no convolution here writes plane moments
// (conv2d_forward_moments), so plane_moments is never given, and summing x is always right.
void CudaBackend::batchnorm_forward_train_fused(const BatchNormGeom& g, const float* x, const float* /*plane_moments*/,
                                          const float* gamma, const float* beta, float eps, float factor,
                                          float* running_mean, float* running_var, const Epilogue& epilogue,
                                          float* y, float* save_mean, float* save_invstd) {
  if (g.C <= 0) return;
  const Plan p = plan_for(g, sm_count_);
  Scratch partial(*this, sizeof(double) * 2 * p.C * p.S);
  Scratch coef(*this, sizeof(float) * 2 * p.C);
  if (p.M > 0) {
    bn_partial_kernel<false><<<p.C * p.S, kThreads, 0, stream_>>>(x, nullptr, GradMask{false, nullptr}, nullptr,
                                                                   nullptr, nullptr, nullptr, p.C, p.HW, p.M,
                                                                   p.chunk, p.S, partial.as<double>(), nullptr);
    POLYAK_CUDA_LAUNCHED();
  } else {
    set_zero(partial.as<double>(), partial.bytes());
  }
  bn_train_finalize_kernel<<<channel_blocks(p.C), kThreads, 0, stream_>>>(
      x, partial.as<double>(), p.C, p.HW, p.M, p.S, gamma, beta, eps, factor, running_mean, running_var, save_mean,
      save_invstd, coef.as<float>());
  POLYAK_CUDA_LAUNCHED();
  if (p.total == 0) return;
  if (p.small) {
    bn_affine_kernel<uint32_t><<<grid_for(p.total), kThreads, 0, stream_>>>(p.total, p.C, p.HW, x, coef.as<float>(),
                                                                             epilogue.residual, epilogue.relu, y);
  } else {
    bn_affine_kernel<int64_t><<<grid_for(p.total), kThreads, 0, stream_>>>(p.total, p.C, p.HW, x, coef.as<float>(),
                                                                            epilogue.residual, epilogue.relu, y);
  }
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::batchnorm_forward_eval_fused(const BatchNormGeom& g, const float* x, const float* gamma,
                                         const float* beta, const float* running_mean, const float* running_var,
                                         float eps, const Epilogue& epilogue, float* y) {
  if (g.C <= 0) return;
  const Plan p = plan_for(g, sm_count_);
  Scratch coef(*this, sizeof(float) * 2 * p.C);
  bn_eval_coef_kernel<<<channel_blocks(p.C), kThreads, 0, stream_>>>(p.C, gamma, beta, running_mean, running_var, eps,
                                                                      coef.as<float>());
  POLYAK_CUDA_LAUNCHED();
  if (p.total == 0) return;
  if (p.small) {
    bn_affine_kernel<uint32_t><<<grid_for(p.total), kThreads, 0, stream_>>>(p.total, p.C, p.HW, x, coef.as<float>(),
                                                                             epilogue.residual, epilogue.relu, y);
  } else {
    bn_affine_kernel<int64_t><<<grid_for(p.total), kThreads, 0, stream_>>>(p.total, p.C, p.HW, x, coef.as<float>(),
                                                                            epilogue.residual, epilogue.relu, y);
  }
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::batchnorm_backward_fused(const BatchNormGeom& g, const float* x, const float* dy, const float* gamma,
                                     const float* beta, const float* save_mean, const float* save_invstd, bool relu,
                                     const float* relu_output, float* dx, float* dresidual, float* dgamma,
                                     float* dbeta) {
  if (g.C <= 0) return;
  const Plan p = plan_for(g, sm_count_);
  const GradMask mask{relu, relu_output};
  Scratch partial(*this, sizeof(double) * 2 * p.C * p.S);
  Scratch coef(*this, sizeof(float) * 5 * p.C);
  if (p.M > 0) {
    bn_partial_kernel<true><<<p.C * p.S, kThreads, 0, stream_>>>(x, dy, mask, gamma, beta, save_mean, save_invstd,
                                                                  p.C, p.HW, p.M, p.chunk, p.S, partial.as<double>(),
                                                                  dresidual);
    POLYAK_CUDA_LAUNCHED();
  } else {
    set_zero(partial.as<double>(), partial.bytes());
  }
  bn_backward_finalize_kernel<<<channel_blocks(p.C), kThreads, 0, stream_>>>(
      partial.as<double>(), p.C, p.M, p.S, gamma, beta, save_mean, save_invstd, dgamma, dbeta, coef.as<float>());
  POLYAK_CUDA_LAUNCHED();
  if (p.total == 0) return;
  if (p.small) {
    bn_backward_apply_kernel<uint32_t><<<grid_for(p.total), kThreads, 0, stream_>>>(
        p.total, p.C, p.HW, x, dy, mask, dresidual, coef.as<float>(), dx);
  } else {
    bn_backward_apply_kernel<int64_t><<<grid_for(p.total), kThreads, 0, stream_>>>(
        p.total, p.C, p.HW, x, dy, mask, dresidual, coef.as<float>(), dx);
  }
  POLYAK_CUDA_LAUNCHED();
}

}  // namespace polyak
