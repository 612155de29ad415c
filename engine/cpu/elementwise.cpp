// Elementwise CPU kernels: fill, strided copy, broadcasting binary ops, scalar and
// unary maps, axpy, multi_lerp. All outputs may alias an input of the same layout
// (in-place use).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "engine/cpu/cpu_backend.h"
#include "engine/parallel.h"

namespace polyak {

void cpu::fill(float* y, int64_t n, float value) {
  parallel_for(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = value;
  });
}

namespace {

// Walks the rows (all dims but the last) of a shape, keeping the offsets of up to two
// strided operands in step with a flat row counter.
struct RowWalker {
  int outer_dims;
  const int64_t* shape;
  int64_t index[kMaxDims] = {};

  // Offsets of row `row` (flat over the outer dims) under the given strides.
  int64_t offset_of(int64_t row, const int64_t* strides) const {
    int64_t offset = 0;
    for (int d = outer_dims - 1; d >= 0; --d) {
      offset += (row % shape[d]) * strides[d];
      row /= shape[d];
    }
    return offset;
  }
};

// The dims of two strided operands (a binary op's inputs, or a copy's destination and
// source as a and b) with those of size 1 dropped, and adjacent dims merged wherever both
// operands step through them as through one: a same-shape add becomes one flat row
// instead of N*C*H rows of W, each placed by a division per dim, and the interior of a
// channel-padded tensor one row per image instead of one per image row.
BroadcastGeom merge_dims(const BroadcastGeom& g) {
  BroadcastGeom m;
  for (int d = 0; d < g.ndim; ++d) {
    if (g.shape[d] == 1) continue;
    const bool mergeable = m.ndim > 0 && m.a_strides[m.ndim - 1] == g.a_strides[d] * g.shape[d] &&
                           m.b_strides[m.ndim - 1] == g.b_strides[d] * g.shape[d];
    if (mergeable) {
      m.shape[m.ndim - 1] *= g.shape[d];
      m.a_strides[m.ndim - 1] = g.a_strides[d];
      m.b_strides[m.ndim - 1] = g.b_strides[d];
    } else {
      m.shape[m.ndim] = g.shape[d];
      m.a_strides[m.ndim] = g.a_strides[d];
      m.b_strides[m.ndim] = g.b_strides[d];
      ++m.ndim;
    }
  }
  return m;
}

// d[j * d_step] = s[j * s_step] for j < n. The steps of slices and their gradients (1
// and 2) are constants to the compiler, which then moves whole vectors (permuted for a
// step of 2); a step known only at run time costs a scalar load and store per element.
template <class T>
void copy_strided_row(const T* s, int64_t s_step, T* d, int64_t d_step, int64_t n) {
  const auto run = [s, d, n](auto s_const, auto d_const) {
    for (int64_t j = 0; j < n; ++j) d[j * d_const] = s[j * s_const];
  };
  if (s_step == 1 && d_step == 1) {
    std::memcpy(d, s, static_cast<size_t>(n) * sizeof(T));
  } else if (s_step == 2 && d_step == 1) {
    run(std::integral_constant<int64_t, 2>{}, std::integral_constant<int64_t, 1>{});
  } else if (s_step == 1 && d_step == 2) {
    run(std::integral_constant<int64_t, 1>{}, std::integral_constant<int64_t, 2>{});
  } else {
    run(s_step, d_step);
  }
}

template <class T>
void copy_rows(T* dst, const Layout& dl, const T* src, const Layout& sl) {
  BroadcastGeom both;  // a: the destination, b: the source
  both.ndim = dl.ndim;
  for (int d = 0; d < dl.ndim; ++d) {
    both.shape[d] = dl.shape[d];
    both.a_strides[d] = dl.strides[d];
    both.b_strides[d] = sl.strides[d];
  }
  const BroadcastGeom g = merge_dims(both);
  if (g.ndim == 0) {  // a single element
    dst[0] = src[0];
    return;
  }
  const int last = g.ndim - 1;
  const int64_t inner = g.shape[last];
  int64_t rows = 1;
  for (int d = 0; d < last; ++d) rows *= g.shape[d];
  parallel_for(rows, inner, [&](int64_t begin, int64_t end) {
    // The index of row `begin` over the outer dims, then counted up row by row (one
    // division per dim here, not per row).
    int64_t index[kMaxDims] = {}, s_at = 0, d_at = 0;
    for (int64_t d = last - 1, rest = begin; d >= 0; --d) {
      index[d] = rest % g.shape[d];
      rest /= g.shape[d];
      s_at += index[d] * g.b_strides[d];
      d_at += index[d] * g.a_strides[d];
    }
    for (int64_t r = begin; r < end; ++r) {
      copy_strided_row(src + s_at, g.b_strides[last], dst + d_at, g.a_strides[last], inner);
      for (int d = last - 1; d >= 0; --d) {  // the next row: carry through the dims
        s_at += g.b_strides[d];
        d_at += g.a_strides[d];
        if (++index[d] < g.shape[d]) break;
        s_at -= g.shape[d] * g.b_strides[d];
        d_at -= g.shape[d] * g.a_strides[d];
        index[d] = 0;
      }
    }
  });
}

template <class F>
void binary_loop(const BroadcastGeom& geom, const float* a, const float* b, float* y, F op) {
  const BroadcastGeom g = merge_dims(geom);
  const int last = g.ndim - 1;
  if (g.ndim == 0) {
    y[0] = op(a[0], b[0]);
    return;
  }
  const int64_t inner = g.shape[last];
  const int64_t as = g.a_strides[last], bs = g.b_strides[last];
  int64_t rows = 1;
  for (int d = 0; d < last; ++d) rows *= g.shape[d];
  // Rows are cut into pieces, so that the threads share the work even when the dims
  // merged into one row (a same-shape add is a single row of every element).
  constexpr int64_t kPiece = 8192;
  const int64_t pieces = (inner + kPiece - 1) / kPiece;
  const RowWalker walker{last, g.shape};
  // Pointers captured by value: see engine/cpu/relu.cpp.
  parallel_for(rows * pieces, std::min(inner, kPiece),
               [&g, &walker, a, b, y, inner, pieces, as, bs, op](int64_t begin, int64_t end) {
                 for (int64_t item = begin; item < end; ++item) {
                   const int64_t r = item / pieces, j0 = item % pieces * kPiece, j1 = std::min(inner, j0 + kPiece);
                   const float* ar = a + walker.offset_of(r, g.a_strides);
                   const float* br = b + walker.offset_of(r, g.b_strides);
                   float* yr = y + r * inner;
                   if (as == 1 && bs == 1) {
                     for (int64_t j = j0; j < j1; ++j) yr[j] = op(ar[j], br[j]);
                   } else if (as == 1 && bs == 0) {
                     const float bv = br[0];
                     for (int64_t j = j0; j < j1; ++j) yr[j] = op(ar[j], bv);
                   } else if (as == 0 && bs == 1) {
                     const float av = ar[0];
                     for (int64_t j = j0; j < j1; ++j) yr[j] = op(av, br[j]);
                   } else {
                     for (int64_t j = j0; j < j1; ++j) yr[j] = op(ar[j * as], br[j * bs]);
                   }
                 }
               });
}

template <class F>
void map(int64_t n, const float* x, float* y, F f) {
  parallel_for(n, 1, [x, y, f](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = f(x[i]);
  });
}

}  // namespace

void cpu::copy_strided(void* dst, const Layout& dst_layout, const void* src, const Layout& src_layout,
                              size_t elem_size) {
  switch (elem_size) {
    case 1: copy_rows(static_cast<uint8_t*>(dst), dst_layout, static_cast<const uint8_t*>(src), src_layout); break;
    case 4: copy_rows(static_cast<uint32_t*>(dst), dst_layout, static_cast<const uint32_t*>(src), src_layout); break;
    case 8: copy_rows(static_cast<uint64_t*>(dst), dst_layout, static_cast<const uint64_t*>(src), src_layout); break;
    default: throw std::invalid_argument("copy_strided: unsupported element size " + std::to_string(elem_size));
  }
}

void cpu::binary(BinaryOp op, const BroadcastGeom& g, const float* a, const float* b, float* y) {
  switch (op) {
    case BinaryOp::Add: binary_loop(g, a, b, y, [](float u, float v) { return u + v; }); break;
    case BinaryOp::Sub: binary_loop(g, a, b, y, [](float u, float v) { return u - v; }); break;
    case BinaryOp::Mul: binary_loop(g, a, b, y, [](float u, float v) { return u * v; }); break;
    case BinaryOp::Div: binary_loop(g, a, b, y, [](float u, float v) { return u / v; }); break;
  }
}

void cpu::scalar(ScalarOp op, int64_t n, const float* x, float s, float* y) {
  switch (op) {
    case ScalarOp::Add: map(n, x, y, [s](float v) { return v + s; }); break;
    case ScalarOp::Mul: map(n, x, y, [s](float v) { return v * s; }); break;
    case ScalarOp::RSub: map(n, x, y, [s](float v) { return s - v; }); break;
    case ScalarOp::RDiv: map(n, x, y, [s](float v) { return s / v; }); break;
    case ScalarOp::Pow: map(n, x, y, [s](float v) { return std::pow(v, s); }); break;
  }
}

void cpu::unary(UnaryOp op, int64_t n, const float* x, float* y) {
  switch (op) {
    case UnaryOp::Neg: map(n, x, y, [](float v) { return -v; }); break;
    case UnaryOp::Exp: map(n, x, y, [](float v) { return std::exp(v); }); break;
    case UnaryOp::Log: map(n, x, y, [](float v) { return std::log(v); }); break;
    case UnaryOp::Sqrt: map(n, x, y, [](float v) { return std::sqrt(v); }); break;
  }
}

void cpu::axpy(int64_t n, float alpha, const float* x, float* y) {
  parallel_for(n, 1, [alpha, x, y](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] += alpha * x[i];
  });
}

void cpu::multi_lerp(const MultiLerp& m, int64_t n, const float* source) {
  parallel_for(n, 2 * m.count, [m, source](int64_t begin, int64_t end) {
    // A block of the source stays in L1 while each target takes its step on it.
    constexpr int64_t kBlock = 2048;
    for (int64_t b = begin; b < end; b += kBlock) {
      const int64_t e = std::min(end, b + kBlock);
      for (int k = 0; k < m.count; ++k) {
        float* __restrict target = m.target[k];
        const float* __restrict s = source;
        const float kept = m.kept[k], moved = 1.0f - kept;
        for (int64_t i = b; i < e; ++i) target[i] = kept * target[i] + moved * s[i];
      }
    }
  });
}

void cpu::increment_counter(int64_t* counter) { ++*counter; }

}  // namespace polyak
