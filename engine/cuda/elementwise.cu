// Elementwise CUDA kernels: fill, strided copy, broadcasting binary ops, scalar and
// unary maps, axpy, multi_lerp (the CPU file: engine/cpu/elementwise.cpp). One thread per output
// element in grid-stride loops; strided operands are read through collapsed
// geometries (common.cuh). Outputs may alias an input of the same layout.
//
// Accuracy: expf, logf, powf are CUDA's (within 2 ulp of the correctly rounded
// result), sqrtf and division are IEEE-rounded; the CPU's libm may differ in the last
// bit, hence the parity tests' relative tolerance of 1e-5.
#include "engine/cuda/common.cuh"

namespace polyak {

using namespace cuda_detail;

namespace {

__global__ void fill_kernel(float* y, int64_t n, float value) {
  POLYAK_GRID_LOOP(i, n) y[i] = value;
}

template <class T, class Index>
__global__ void copy_strided_kernel(T* dst, const T* src, Strided2 g, int64_t n) {
  POLYAK_GRID_LOOP(i, n) {
    Index od, os;
    strided_offsets<Index>(g, static_cast<Index>(i), od, os);
    dst[od] = src[os];
  }
}

__device__ inline float apply(BinaryOp op, float u, float v) {
  switch (op) {
    case BinaryOp::Add: return u + v;
    case BinaryOp::Sub: return u - v;
    case BinaryOp::Mul: return u * v;
    case BinaryOp::Div: return u / v;
  }
  return 0.0f;
}

// y is contiguous over g's (uncollapsed) shape, so y's offset is the flat index.
template <class Index>
__global__ void binary_kernel(BinaryOp op, const float* a, const float* b, float* y, Strided2 g, int64_t n) {
  POLYAK_GRID_LOOP(i, n) {
    Index oa, ob;
    strided_offsets<Index>(g, static_cast<Index>(i), oa, ob);
    y[i] = apply(op, a[oa], b[ob]);
  }
}

__global__ void binary_contiguous_kernel(BinaryOp op, const float* a, const float* b, float* y, int64_t n) {
  POLYAK_GRID_LOOP(i, n) y[i] = apply(op, a[i], b[i]);
}

__global__ void scalar_kernel(ScalarOp op, int64_t n, const float* x, float s, float* y) {
  POLYAK_GRID_LOOP(i, n) {
    const float v = x[i];
    float r = 0.0f;
    switch (op) {
      case ScalarOp::Add: r = v + s; break;
      case ScalarOp::Mul: r = v * s; break;
      case ScalarOp::RSub: r = s - v; break;
      case ScalarOp::RDiv: r = s / v; break;
      case ScalarOp::Pow: r = powf(v, s); break;
    }
    y[i] = r;
  }
}

__global__ void unary_kernel(UnaryOp op, int64_t n, const float* x, float* y) {
  POLYAK_GRID_LOOP(i, n) {
    const float v = x[i];
    float r = 0.0f;
    switch (op) {
      case UnaryOp::Neg: r = -v; break;
      case UnaryOp::Exp: r = expf(v); break;
      case UnaryOp::Log: r = logf(v); break;
      case UnaryOp::Sqrt: r = sqrtf(v); break;
    }
    y[i] = r;
  }
}

__global__ void axpy_kernel(int64_t n, float alpha, const float* x, float* y) {
  POLYAK_GRID_LOOP(i, n) y[i] += alpha * x[i];
}

// Every target reads the source element once from a register.
__global__ void multi_lerp_kernel(MultiLerp m, int64_t n, const float* source) {
  POLYAK_GRID_LOOP(i, n) {
    const float s = source[i];
#pragma unroll
    for (int k = 0; k < kMaxLerpTargets; ++k) {
      if (k < m.count) m.target[k][i] = m.kept[k] * m.target[k][i] + (1.0f - m.kept[k]) * s;
    }
  }
}

__global__ void increment_counter_kernel(int64_t* counter) { ++*counter; }

template <class T>
void launch_copy(cudaStream_t stream, void* dst, const void* src, const Strided2& g, int64_t n) {
  T* d = static_cast<T*>(dst);
  const T* s = static_cast<const T*>(src);
  if (fits_u32(g)) {
    copy_strided_kernel<T, uint32_t><<<grid_for(n), kThreads, 0, stream>>>(d, s, g, n);
  } else {
    copy_strided_kernel<T, int64_t><<<grid_for(n), kThreads, 0, stream>>>(d, s, g, n);
  }
  POLYAK_CUDA_LAUNCHED();
}

}  // namespace

void CudaBackend::fill(float* y, int64_t n, float value) {
  if (n <= 0) return;
  fill_kernel<<<grid_for(n), kThreads, 0, stream_>>>(y, n, value);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::copy_strided(void* dst, const Layout& dl, const void* src, const Layout& sl, size_t elem_size) {
  int64_t n = 1;
  for (int d = 0; d < dl.ndim; ++d) n *= dl.shape[d];
  if (n == 0) return;
  const Strided2 g = collapse(dl.ndim, dl.shape, dl.strides, sl.strides);
  if (g.ndim == 0 || (g.ndim == 1 && g.s0[0] == 1 && g.s1[0] == 1)) {
    copy(dst, src, static_cast<size_t>(n) * elem_size);  // both contiguous: one DMA
    return;
  }
  switch (elem_size) {
    case 1: launch_copy<uint8_t>(stream_, dst, src, g, n); break;
    case 4: launch_copy<uint32_t>(stream_, dst, src, g, n); break;
    case 8: launch_copy<uint64_t>(stream_, dst, src, g, n); break;
    default: throw std::invalid_argument("copy_strided: unsupported element size " + std::to_string(elem_size));
  }
}

void CudaBackend::binary(BinaryOp op, const BroadcastGeom& geom, const float* a, const float* b, float* y) {
  int64_t n = 1;
  for (int d = 0; d < geom.ndim; ++d) n *= geom.shape[d];
  if (n == 0) return;
  const Strided2 g = collapse(geom.ndim, geom.shape, geom.a_strides, geom.b_strides);
  // The output is contiguous over geom.shape; collapsing only merges dims that the
  // operands walk contiguously, which the output always does, so flat index i of the
  // collapsed shape is still y's offset.
  if (g.ndim == 1 && g.s0[0] == 1 && g.s1[0] == 1) {
    binary_contiguous_kernel<<<grid_for(n), kThreads, 0, stream_>>>(op, a, b, y, n);
  } else if (fits_u32(g)) {
    binary_kernel<uint32_t><<<grid_for(n), kThreads, 0, stream_>>>(op, a, b, y, g, n);
  } else {
    binary_kernel<int64_t><<<grid_for(n), kThreads, 0, stream_>>>(op, a, b, y, g, n);
  }
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::scalar(ScalarOp op, int64_t n, const float* x, float s, float* y) {
  if (n <= 0) return;
  scalar_kernel<<<grid_for(n), kThreads, 0, stream_>>>(op, n, x, s, y);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::unary(UnaryOp op, int64_t n, const float* x, float* y) {
  if (n <= 0) return;
  unary_kernel<<<grid_for(n), kThreads, 0, stream_>>>(op, n, x, y);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::axpy(int64_t n, float alpha, const float* x, float* y) {
  if (n <= 0) return;
  axpy_kernel<<<grid_for(n), kThreads, 0, stream_>>>(n, alpha, x, y);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::multi_lerp(const MultiLerp& m, int64_t n, const float* source) {
  if (n <= 0 || m.count <= 0) return;
  if (m.count > kMaxLerpTargets)
    throw std::invalid_argument("multi_lerp: at most " + std::to_string(kMaxLerpTargets) + " targets, got " +
                                std::to_string(m.count));
  multi_lerp_kernel<<<grid_for(n), kThreads, 0, stream_>>>(m, n, source);
  POLYAK_CUDA_LAUNCHED();
}

void CudaBackend::increment_counter(int64_t* counter) {
  increment_counter_kernel<<<1, 1, 0, stream_>>>(counter);
  POLYAK_CUDA_LAUNCHED();
}

}  // namespace polyak
