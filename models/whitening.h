// The frozen "whitening" convolution of airbench94 (Keller Jordan's CIFAR-10 speedruns,
// after tysam-code's hlb-CIFAR10): a k x k convolution whose filters are the principal
// directions of the k x k patches of training images, each scaled to unit variance,
// and their negatives. With the C k^2 patch values of every patch stacked as rows of P
// (n patches), the second-moment matrix S = P^T P / n (not centred) has eigenvalues
// l_1 >= ... >= l_d and unit eigenvectors v_i; filter i is v_i / sqrt(l_i + eps), filter
// d + i its negative, so that before the GELU each direction's positive and negative
// parts both survive. The filters applied to the patches give outputs whose second
// moments are l_i / (l_i + eps), about 1: the first layer sees decorrelated inputs.
#pragma once

#include "engine/tensor.h"

namespace polyak::models {

// The 2 C k^2 filters, shape (2 C k^2, C, k, k), from the k x k patches (stride 1, no
// padding) of `images` (N, C, H, W) on the CPU. Eigenvectors come from LAPACK
// (engine/linalg.h); each one's sign is LAPACK's choice, as torch.linalg.eigh's is.
Tensor whitening_filters(const Tensor& images, int64_t kernel, double eps = 5e-4);

}  // namespace polyak::models
