// 2-D convolution on the GPU through cuDNN (the CPU file: engine/cpu/conv2d.cpp, which
// states the math; NCHW, groups 1, dilation 1, cross-correlation as in PyTorch).
//
// Algorithms. For each geometry (and each setting of TF32 and determinism) a plan
// holds the cuDNN descriptors and, per direction, the algorithm chosen the first time
// that direction runs: cudnnGet*_v7 lists the candidates and their workspace needs,
// cudnnFind*Ex times them on the call's own buffers with a workspace as large as the
// largest candidate needs (capped at 1 GiB and half the free memory), and the fastest
// successful one is kept. In deterministic mode nothing is timed (timings differ from
// run to run, and so would the choice): the heuristic's first candidate that cuDNN
// marks deterministic is kept. Later calls only look the plan up. The workspace of a call comes from the caching
// allocator; the one-off search workspace does not (it would linger in the cache).
//
// Math: with TF32 off the descriptors ask for CUDNN_FMA_MATH, so that no algorithm
// rounds inputs to TF32 (cuDNN's default math would allow it on Ampere and later).
//
// Fallback. When cuDNN offers no usable algorithm for a direction (or the tests force
// it with set_cuda_conv_force_fallback), that direction runs as on the CPU: im2col into
// a column buffer for a chunk of images, then cuBLAS products (strided-batched over the
// chunk), and col2im as a gather (each input pixel sums the taps that read it: no
// atomics). The filter gradient adds the images' products one after another into dW.
//
// Bias: the forward adds bias[k] to every output pixel of channel k; its gradient is a
// deterministic reduce_sum of dy over (N, P, Q).
#include <atomic>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/cuda/common.cuh"
#include "engine/cuda/libraries.h"

namespace polyak {

using namespace cuda_detail;

namespace {

std::atomic<bool> g_force_fallback{false};

constexpr size_t kMaxSearchWorkspace = size_t{1} << 30;
constexpr size_t kFallbackColumnBytes = size_t{256} << 20;

struct Choice {
  bool chosen = false;
  bool fallback = false;
  int algo = 0;
  size_t workspace = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

int as_int(int64_t v, const char* what) {
  if (v < 0 || v > std::numeric_limits<int>::max())
    throw std::invalid_argument(std::string("conv2d on the GPU: ") + what + " = " + std::to_string(v) + " is too large");
  return static_cast<int>(v);
}

std::string geometry_string(const Conv2dGeom& g) {
  return "input [" + std::to_string(g.N) + ", " + std::to_string(g.C) + ", " + std::to_string(g.H) + ", " +
         std::to_string(g.W) + "], weight [" + std::to_string(g.K) + ", " + std::to_string(g.C) + ", " +
         std::to_string(g.R) + ", " + std::to_string(g.S) + "], stride " + std::to_string(g.stride_h) + "x" +
         std::to_string(g.stride_w) + ", padding " + std::to_string(g.pad_h) + "x" + std::to_string(g.pad_w);
}

// A workspace for cudnnFind*Ex, straight from the driver (freed right after the search).
struct SearchWorkspace {
  void* ptr = nullptr;
  size_t bytes = 0;
  explicit SearchWorkspace(size_t wanted) {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) (void)cudaGetLastError();
    bytes = std::min({wanted, kMaxSearchWorkspace, free_bytes / 2});
    while (bytes > 0 && cudaMalloc(&ptr, bytes) != cudaSuccess) {
      (void)cudaGetLastError();
      ptr = nullptr;
      bytes /= 2;
    }
  }
  ~SearchWorkspace() {
    if (ptr) (void)cudaFree(ptr);
  }
};

// The first usable result of a cudnnFind*Ex list (sorted fastest first).
template <class Perf>
Choice pick(const Perf* perf, int count, size_t workspace_limit, bool deterministic, bool tf32) {
  Choice choice;
  choice.chosen = true;
  for (int i = 0; i < count; ++i) {
    const Perf& p = perf[i];
    if (p.status != CUDNN_STATUS_SUCCESS || p.memory > workspace_limit) continue;
    if (deterministic && p.determinism != CUDNN_DETERMINISTIC) continue;
    choice.algo = static_cast<int>(p.algo);
    choice.workspace = p.memory;
    choice.math = tf32 ? p.mathType : CUDNN_FMA_MATH;
    return choice;
  }
  choice.fallback = true;
  return choice;
}

// Largest workspace among the heuristic's successful candidates.
template <class Perf>
size_t largest_workspace(const Perf* perf, int count) {
  size_t bytes = 0;
  for (int i = 0; i < count; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS) bytes = std::max(bytes, perf[i].memory);
  return bytes;
}

// ---- kernels of the fallback path and the bias ----

// col[(nn * CRS + (c*R + r)*S + s) * PQ + p*Q + q] = x[n0 + nn, c, p*sh - ph + r, q*sw - pw + s] (0 outside).
__global__ void im2col_kernel(Conv2dGeom g, int64_t images, const float* x, float* col) {
  const int64_t PQ = g.P * g.Q, CRS = g.C * g.R * g.S, total = images * CRS * PQ;
  POLYAK_GRID_LOOP(i, total) {
    const int64_t q = i % g.Q, p = (i / g.Q) % g.P, row = (i / PQ) % CRS, nn = i / (PQ * CRS);
    const int64_t s = row % g.S, r = (row / g.S) % g.R, c = row / (g.R * g.S);
    const int64_t h = p * g.stride_h - g.pad_h + r, w = q * g.stride_w - g.pad_w + s;
    col[i] = (h >= 0 && h < g.H && w >= 0 && w < g.W) ? x[((nn * g.C + c) * g.H + h) * g.W + w] : 0.0f;
  }
}

// dx[n0 + nn, c, h, w] = sum of the col entries that im2col filled from that pixel.
__global__ void col2im_kernel(Conv2dGeom g, int64_t images, const float* col, float* dx) {
  const int64_t PQ = g.P * g.Q, CRS = g.C * g.R * g.S, total = images * g.C * g.H * g.W;
  POLYAK_GRID_LOOP(i, total) {
    const int64_t w = i % g.W, h = (i / g.W) % g.H, c = (i / (g.H * g.W)) % g.C, nn = i / (g.C * g.H * g.W);
    const float* base = col + nn * CRS * PQ;
    float sum = 0.0f;
    for (int64_t r = 0; r < g.R; ++r) {
      const int64_t ph = h + g.pad_h - r;  // = p * stride_h
      if (ph < 0 || ph % g.stride_h != 0 || ph / g.stride_h >= g.P) continue;
      const int64_t p = ph / g.stride_h;
      for (int64_t s = 0; s < g.S; ++s) {
        const int64_t qw = w + g.pad_w - s;
        if (qw < 0 || qw % g.stride_w != 0 || qw / g.stride_w >= g.Q) continue;
        sum += base[((c * g.R + r) * g.S + s) * PQ + p * g.Q + qw / g.stride_w];
      }
    }
    dx[i] = sum;
  }
}

// y = act(y + bias + residual), each part where given: the forward's bias and epilogue
// in one pass after cuDNN.
__global__ void conv_epilogue_kernel(int64_t total, int64_t K, int64_t PQ, const float* bias, const float* residual,
                                     bool relu, float* y) {
  POLYAK_GRID_LOOP(i, total) {
    float v = y[i];
    if (bias) v = __fadd_rn(v, bias[(i / PQ) % K]);
    if (residual) v = __fadd_rn(v, residual[i]);
    y[i] = relu && !(v > 0.0f) ? 0.0f : v;
  }
}

}  // namespace

void set_cuda_conv_force_fallback(bool on) { g_force_fallback = on; }

struct CudaBackend::ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  Choice forward, backward_data, backward_filter;
  bool deterministic = false, tf32 = false;
};

void CudaBackend::destroy_conv_plan(ConvPlan* plan) {
  if (!plan) return;
  if (plan->x) cudnnDestroyTensorDescriptor(plan->x);
  if (plan->y) cudnnDestroyTensorDescriptor(plan->y);
  if (plan->w) cudnnDestroyFilterDescriptor(plan->w);
  if (plan->conv) cudnnDestroyConvolutionDescriptor(plan->conv);
  delete plan;
}

CudaBackend::ConvPlan& CudaBackend::conv_plan(const Conv2dGeom& g) {
  const bool deterministic = cuda_deterministic(), tf32 = cuda_tf32();
  const std::vector<int64_t> key{g.N,        g.C,        g.H,     g.W,     g.K,           g.R,  g.S,
                                 g.stride_h, g.stride_w, g.pad_h, g.pad_w, deterministic, tf32};
  std::lock_guard lock(conv_mutex_);
  auto it = conv_plans_.find(key);
  if (it != conv_plans_.end()) return *it->second;

  if (g.N * g.C * g.H * g.W > std::numeric_limits<int32_t>::max() ||
      g.N * g.K * g.P * g.Q > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("conv2d on the GPU: tensors of more than 2^31 elements are not supported (" +
                                geometry_string(g) + ")");
  ConvPlan* plan = new ConvPlan();
  try {
    plan->deterministic = deterministic;
    plan->tf32 = tf32;
    POLYAK_CUDNN(cudnnCreateTensorDescriptor(&plan->x));
    POLYAK_CUDNN(cudnnCreateTensorDescriptor(&plan->y));
    POLYAK_CUDNN(cudnnCreateFilterDescriptor(&plan->w));
    POLYAK_CUDNN(cudnnCreateConvolutionDescriptor(&plan->conv));
    POLYAK_CUDNN(cudnnSetTensor4dDescriptor(plan->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, as_int(g.N, "N"),
                                            as_int(g.C, "C"), as_int(g.H, "H"), as_int(g.W, "W")));
    POLYAK_CUDNN(cudnnSetFilter4dDescriptor(plan->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, as_int(g.K, "K"),
                                            as_int(g.C, "C"), as_int(g.R, "R"), as_int(g.S, "S")));
    POLYAK_CUDNN(cudnnSetConvolution2dDescriptor(plan->conv, as_int(g.pad_h, "pad"), as_int(g.pad_w, "pad"),
                                                 as_int(g.stride_h, "stride"), as_int(g.stride_w, "stride"), 1, 1,
                                                 CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    POLYAK_CUDNN(cudnnSetConvolutionMathType(plan->conv, tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
    int n = 0, k = 0, p = 0, q = 0;
    POLYAK_CUDNN(cudnnGetConvolution2dForwardOutputDim(plan->conv, plan->x, plan->w, &n, &k, &p, &q));
    if (n != g.N || k != g.K || p != g.P || q != g.Q)
      throw std::logic_error("conv2d: cuDNN's output shape differs from the op's for " + geometry_string(g));
    POLYAK_CUDNN(cudnnSetTensor4dDescriptor(plan->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, k, p, q));
  } catch (...) {
    destroy_conv_plan(plan);
    throw;
  }
  conv_plans_.emplace(key, plan);
  return *plan;
}

// ---------------------------------------------------------------- forward

void CudaBackend::conv2d_forward_epilogue(const Conv2dGeom& g, const float* x, const float* w, const float* bias,
                                 const Epilogue& epilogue, float* y) {
  const int64_t total = g.N * g.K * g.P * g.Q;
  if (total == 0) return;
  if (g_force_fallback) {
    conv2d_fallback_forward(g, x, w, y);
  } else {
    ConvPlan& plan = conv_plan(g);
    cudnnHandle_t handle = cudnn();
    if (!plan.forward.chosen) {
      int max_count = 0, count = 0;
      POLYAK_CUDNN(cudnnGetConvolutionForwardAlgorithmMaxCount(handle, &max_count));
      std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
      POLYAK_CUDNN(cudnnSetConvolutionMathType(plan.conv, plan.tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
      POLYAK_CUDNN(cudnnGetConvolutionForwardAlgorithm_v7(handle, plan.x, plan.w, plan.conv, plan.y, max_count, &count,
                                                          perf.data()));
      if (plan.deterministic) {
        // No timing: the heuristic's first deterministic candidate, the same every run.
        plan.forward = pick(perf.data(), count, kMaxSearchWorkspace, true, plan.tf32);
      } else {
        SearchWorkspace ws(largest_workspace(perf.data(), count));
        POLYAK_CUDNN(cudnnFindConvolutionForwardAlgorithmEx(handle, plan.x, x, plan.w, w, plan.conv, plan.y, y,
                                                            max_count, &count, perf.data(), ws.ptr, ws.bytes));
        plan.forward = pick(perf.data(), count, ws.bytes, false, plan.tf32);
      }
    }
    if (plan.forward.fallback) {
      conv2d_fallback_forward(g, x, w, y);
    } else {
      Scratch ws(*this, plan.forward.workspace);
      const float one = 1.0f, zero = 0.0f;
      POLYAK_CUDNN(cudnnSetConvolutionMathType(plan.conv, plan.forward.math));
      POLYAK_CUDNN(cudnnConvolutionForward(handle, &one, plan.x, x, plan.w, w, plan.conv,
                                           static_cast<cudnnConvolutionFwdAlgo_t>(plan.forward.algo), ws.as<void>(),
                                           ws.bytes(), &zero, plan.y, y));
    }
  }
  if (bias || epilogue.residual || epilogue.relu) {
    conv_epilogue_kernel<<<grid_for(total), kThreads, 0, stream_>>>(total, g.K, g.P * g.Q, bias, epilogue.residual,
                                                                    epilogue.relu, y);
    POLYAK_CUDA_LAUNCHED();
  }
}

// ---------------------------------------------------------------- backward data

void CudaBackend::conv2d_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx) {
  if (g.N * g.C * g.H * g.W == 0) return;
  if (g.K * g.P * g.Q == 0) {
    set_zero(dx, sizeof(float) * g.N * g.C * g.H * g.W);
    return;
  }
  if (g_force_fallback) return conv2d_fallback_backward_data(g, dy, w, dx);
  ConvPlan& plan = conv_plan(g);
  cudnnHandle_t handle = cudnn();
  if (!plan.backward_data.chosen) {
    int max_count = 0, count = 0;
    POLYAK_CUDNN(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(handle, &max_count));
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
    POLYAK_CUDNN(cudnnSetConvolutionMathType(plan.conv, plan.tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
    POLYAK_CUDNN(cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, plan.w, plan.y, plan.conv, plan.x, max_count,
                                                             &count, perf.data()));
    if (plan.deterministic) {
      // No timing: the heuristic's first deterministic candidate, the same every run.
      plan.backward_data = pick(perf.data(), count, kMaxSearchWorkspace, true, plan.tf32);
    } else {
      SearchWorkspace ws(largest_workspace(perf.data(), count));
      POLYAK_CUDNN(cudnnFindConvolutionBackwardDataAlgorithmEx(handle, plan.w, w, plan.y, dy, plan.conv, plan.x, dx,
                                                               max_count, &count, perf.data(), ws.ptr, ws.bytes));
      plan.backward_data = pick(perf.data(), count, ws.bytes, false, plan.tf32);
    }
  }
  if (plan.backward_data.fallback) return conv2d_fallback_backward_data(g, dy, w, dx);
  Scratch ws(*this, plan.backward_data.workspace);
  const float one = 1.0f, zero = 0.0f;
  POLYAK_CUDNN(cudnnSetConvolutionMathType(plan.conv, plan.backward_data.math));
  POLYAK_CUDNN(cudnnConvolutionBackwardData(handle, &one, plan.w, w, plan.y, dy, plan.conv,
                                            static_cast<cudnnConvolutionBwdDataAlgo_t>(plan.backward_data.algo),
                                            ws.as<void>(), ws.bytes(), &zero, plan.x, dx));
}

// ---------------------------------------------------------------- backward filter

void CudaBackend::conv2d_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw,
                                         float* dbias) {
  if (dbias) {
    const ReduceGeom geom{3, {g.N, g.K, g.P * g.Q}, {true, false, true}};
    reduce_sum(geom, dy, dbias);
  }
  const int64_t weights = g.K * g.C * g.R * g.S;
  if (weights == 0) return;
  if (g.N * g.P * g.Q == 0) {
    set_zero(dw, sizeof(float) * weights);
    return;
  }
  if (g_force_fallback) return conv2d_fallback_backward_filter(g, x, dy, dw);
  ConvPlan& plan = conv_plan(g);
  cudnnHandle_t handle = cudnn();
  if (!plan.backward_filter.chosen) {
    int max_count = 0, count = 0;
    POLYAK_CUDNN(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(handle, &max_count));
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(static_cast<size_t>(std::max(max_count, 1)));
    POLYAK_CUDNN(cudnnSetConvolutionMathType(plan.conv, plan.tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
    POLYAK_CUDNN(cudnnGetConvolutionBackwardFilterAlgorithm_v7(handle, plan.x, plan.y, plan.conv, plan.w, max_count,
                                                               &count, perf.data()));
    if (plan.deterministic) {
      // No timing: the heuristic's first deterministic candidate, the same every run.
      plan.backward_filter = pick(perf.data(), count, kMaxSearchWorkspace, true, plan.tf32);
    } else {
      SearchWorkspace ws(largest_workspace(perf.data(), count));
      POLYAK_CUDNN(cudnnFindConvolutionBackwardFilterAlgorithmEx(handle, plan.x, x, plan.y, dy, plan.conv, plan.w, dw,
                                                                 max_count, &count, perf.data(), ws.ptr, ws.bytes));
      plan.backward_filter = pick(perf.data(), count, ws.bytes, false, plan.tf32);
    }
  }
  if (plan.backward_filter.fallback) return conv2d_fallback_backward_filter(g, x, dy, dw);
  Scratch ws(*this, plan.backward_filter.workspace);
  const float one = 1.0f, zero = 0.0f;
  POLYAK_CUDNN(cudnnSetConvolutionMathType(plan.conv, plan.backward_filter.math));
  POLYAK_CUDNN(cudnnConvolutionBackwardFilter(handle, &one, plan.x, x, plan.y, dy, plan.conv,
                                              static_cast<cudnnConvolutionBwdFilterAlgo_t>(plan.backward_filter.algo),
                                              ws.as<void>(), ws.bytes(), &zero, plan.w, dw));
}

// ---------------------------------------------------------------- im2col + cuBLAS fallback

namespace {

int64_t images_per_chunk(const Conv2dGeom& g) {
  const int64_t per_image = std::max<int64_t>(1, g.C * g.R * g.S * g.P * g.Q) * static_cast<int64_t>(sizeof(float));
  return std::clamp<int64_t>(static_cast<int64_t>(kFallbackColumnBytes) / per_image, 1, g.N);
}

}  // namespace

void CudaBackend::conv2d_fallback_forward(const Conv2dGeom& g, const float* x, const float* w, float* y) {
  const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q, chunk = images_per_chunk(g);
  Scratch col(*this, sizeof(float) * chunk * CRS * PQ);
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t images = std::min(chunk, g.N - n0);
    im2col_kernel<<<grid_for(images * CRS * PQ), kThreads, 0, stream_>>>(g, images, x + n0 * g.C * g.H * g.W,
                                                                          col.as<float>());
    POLYAK_CUDA_LAUNCHED();
    // y[n] (K x PQ) = W (K x CRS) * col[n] (CRS x PQ)
    gemm_strided_batched(false, false, g.K, PQ, CRS, 1.0f, w, CRS, 0, col.as<float>(), PQ, CRS * PQ, 0.0f,
                         y + n0 * g.K * PQ, PQ, g.K * PQ, images);
  }
}

void CudaBackend::conv2d_fallback_backward_data(const Conv2dGeom& g, const float* dy, const float* w, float* dx) {
  const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q, chunk = images_per_chunk(g);
  Scratch col(*this, sizeof(float) * chunk * CRS * PQ);
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t images = std::min(chunk, g.N - n0);
    // dcol[n] (CRS x PQ) = W^T (CRS x K) * dy[n] (K x PQ)
    gemm_strided_batched(true, false, CRS, PQ, g.K, 1.0f, w, CRS, 0, dy + n0 * g.K * PQ, PQ, g.K * PQ, 0.0f,
                         col.as<float>(), PQ, CRS * PQ, images);
    col2im_kernel<<<grid_for(images * g.C * g.H * g.W), kThreads, 0, stream_>>>(g, images, col.as<float>(),
                                                                                 dx + n0 * g.C * g.H * g.W);
    POLYAK_CUDA_LAUNCHED();
  }
}

void CudaBackend::conv2d_fallback_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw) {
  const int64_t CRS = g.C * g.R * g.S, PQ = g.P * g.Q, chunk = images_per_chunk(g);
  Scratch col(*this, sizeof(float) * chunk * CRS * PQ);
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t images = std::min(chunk, g.N - n0);
    im2col_kernel<<<grid_for(images * CRS * PQ), kThreads, 0, stream_>>>(g, images, x + n0 * g.C * g.H * g.W,
                                                                          col.as<float>());
    POLYAK_CUDA_LAUNCHED();
    // dW (K x CRS) (+)= dy[n] (K x PQ) * col[n]^T (PQ x CRS), image after image.
    for (int64_t i = 0; i < images; ++i) {
      const int64_t n = n0 + i;
      gemm(false, true, g.K, CRS, PQ, 1.0f, dy + n * g.K * PQ, PQ, col.as<float>() + i * CRS * PQ, PQ,
           n == 0 ? 0.0f : 1.0f, dw, CRS);
    }
  }
}

}  // namespace polyak
