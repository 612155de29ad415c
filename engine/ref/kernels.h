// The reference kernels: the engine's executable specification.
//
// One plain loop nest per kernel of engine/kernels.h, single-threaded, sums accumulated
// in double, written to be read next to the math in the comments; each family in its
// own file here (elementwise.cpp, gemm.cpp, conv2d.cpp, ...). They are the reference
// table (reference_kernels()), which POLYAK_KERNELS=reference runs the whole engine on,
// and the specification tests/engine/test_kernels.cpp checks every fast kernel against.
// The fusions (POLYAK_FUSED_KERNELS) have no reference of their own: theirs is the
// composition of these (e.g. conv2d_forward, then binary Add of the residual, then
// relu_forward).
#pragma once

#include <cstdint>

#include "engine/kernels.h"

namespace polyak::ref {

// void fill(float* y, int64_t n, float value); and so on, for every kernel of the list.
POLYAK_KERNELS(POLYAK_DECLARE_KERNEL)

// std::out_of_range naming the first label outside [0, cols): the host tables' check
// before a cross-entropy reads log_probs[labels[r]].
void check_labels(int64_t rows, int64_t cols, const int64_t* labels);

}  // namespace polyak::ref
