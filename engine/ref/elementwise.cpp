// Reference elementwise kernels, ReLU and the sum over dims (see kernels.h).
//
// Strided operands are read element by element: element `flat` of a shape (row-major
// order) sits at offset sum_d index_d * stride_d, where index is `flat` written in the
// mixed radix of the shape. A stride of 0 repeats the element along that dim
// (broadcasting).
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/ref/kernels.h"

namespace polyak::ref {

namespace {

int64_t element_count(int ndim, const int64_t* shape) {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  return n;
}

int64_t offset_of(int64_t flat, int ndim, const int64_t* shape, const int64_t* strides) {
  int64_t offset = 0;
  for (int d = ndim - 1; d >= 0; --d) {
    offset += (flat % shape[d]) * strides[d];
    flat /= shape[d];
  }
  return offset;
}

}  // namespace

void fill(float* y, int64_t n, float value) {
  for (int64_t i = 0; i < n; ++i) y[i] = value;
}

void copy_strided(void* dst, const Layout& dst_layout, const void* src, const Layout& src_layout, size_t elem_size) {
  if (elem_size != 1 && elem_size != 4 && elem_size != 8)
    throw std::invalid_argument("copy_strided: unsupported element size " + std::to_string(elem_size));
  const int64_t n = element_count(dst_layout.ndim, dst_layout.shape);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t to = offset_of(i, dst_layout.ndim, dst_layout.shape, dst_layout.strides);
    const int64_t from = offset_of(i, dst_layout.ndim, dst_layout.shape, src_layout.strides);
    std::memcpy(static_cast<char*>(dst) + to * elem_size, static_cast<const char*>(src) + from * elem_size, elem_size);
  }
}

void binary(BinaryOp op, const BroadcastGeom& g, const float* a, const float* b, float* y) {
  const int64_t n = element_count(g.ndim, g.shape);
  for (int64_t i = 0; i < n; ++i) {
    const float u = a[offset_of(i, g.ndim, g.shape, g.a_strides)];
    const float v = b[offset_of(i, g.ndim, g.shape, g.b_strides)];
    switch (op) {
      case BinaryOp::Add: y[i] = u + v; break;
      case BinaryOp::Sub: y[i] = u - v; break;
      case BinaryOp::Mul: y[i] = u * v; break;
      case BinaryOp::Div: y[i] = u / v; break;
    }
  }
}

void scalar(ScalarOp op, int64_t n, const float* x, float s, float* y) {
  for (int64_t i = 0; i < n; ++i) {
    switch (op) {
      case ScalarOp::Add: y[i] = x[i] + s; break;
      case ScalarOp::Mul: y[i] = x[i] * s; break;
      case ScalarOp::RSub: y[i] = s - x[i]; break;
      case ScalarOp::RDiv: y[i] = s / x[i]; break;
      case ScalarOp::Pow: y[i] = std::pow(x[i], s); break;
    }
  }
}

void unary(UnaryOp op, int64_t n, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) {
    switch (op) {
      case UnaryOp::Neg: y[i] = -x[i]; break;
      case UnaryOp::Exp: y[i] = std::exp(x[i]); break;
      case UnaryOp::Log: y[i] = std::log(x[i]); break;
      case UnaryOp::Sqrt: y[i] = std::sqrt(x[i]); break;
    }
  }
}

void axpy(int64_t n, float alpha, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// target_k = kept_k * target_k + (1 - kept_k) * source, for every target k.
void multi_lerp(const MultiLerp& m, int64_t n, const float* source) {
  for (int k = 0; k < m.count; ++k)
    for (int64_t i = 0; i < n; ++i) m.target[k][i] = m.kept[k] * m.target[k][i] + (1.0f - m.kept[k]) * source[i];
}

void increment_counter(int64_t* counter) { ++*counter; }

// y = max(x, 0); dx = dy where y > 0, else 0 (the subgradient 0 at 0, as PyTorch).
void relu_forward(int64_t n, const float* x, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_backward(int64_t n, const float* y, const float* dy, float* dx) {
  for (int64_t i = 0; i < n; ++i) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// y = the sum of x over the dims flagged in geom.reduce; y is contiguous with those dims
// of size 1, so input element i adds to the output element whose index is i's with the
// reduced dims' indices set to 0 (strides of 0 over them).
void reduce_sum(const ReduceGeom& g, const float* x, float* y) {
  int64_t out_strides[kMaxDims] = {}, out_count = 1;
  for (int d = g.ndim - 1; d >= 0; --d) {
    out_strides[d] = g.reduce[d] ? 0 : out_count;
    if (!g.reduce[d]) out_count *= g.shape[d];
  }
  std::vector<double> sums(static_cast<size_t>(out_count), 0.0);
  const int64_t n = element_count(g.ndim, g.shape);
  for (int64_t i = 0; i < n; ++i) sums[static_cast<size_t>(offset_of(i, g.ndim, g.shape, out_strides))] += x[i];
  for (int64_t j = 0; j < out_count; ++j) y[j] = static_cast<float>(sums[static_cast<size_t>(j)]);
}

}  // namespace polyak::ref
