// The CPU convolution algorithms (engine/cpu/conv2d*.cpp and winograd*.cpp have the
// math), callable one by one so that the tests can hold the fast ones against the
// reference on any shape. The backend's conv2d kernels use Winograd for 3x3 layers with
// many channels, shifted rows where they apply and the map is not tiny, and im2col
// elsewhere (conv_algorithm).
#pragma once

#include "engine/backend.h"

namespace polyak::cpu {

enum class ConvAlgorithm {
  Im2col,       // the reference: im2col + sgemm, col2im for the data gradient; every geometry
  ShiftedRows,  // implicit im2col on a zero-padded image, split into phases when strided;
                // any stride, and stride 1 with padding < the kernel size
  Winograd,     // the forward by Winograd's F(2x2, 3x3) (winograd.cpp), the gradients by shifted rows;
                // 3x3, stride 1, padding < 3
  WinogradLanes,  // F(4x4, 3x3) with 16 images in the vector lanes (winograd_lanes.cpp), and the
                  // filter gradient as Winograd's adjoint; on CPUs with AVX-512
};

bool conv_supports(ConvAlgorithm algorithm, const Conv2dGeom& g);
// The algorithm the backend uses for g.
ConvAlgorithm conv_algorithm(const Conv2dGeom& g);

void conv2d_forward(ConvAlgorithm algorithm, const Conv2dGeom& g, const float* x, const float* w,
                    const float* bias /*nullable*/, const Epilogue& epilogue, float* y);
// conv2d_forward without an epilogue that also writes the plane moments of y
// (engine/kernels.h) where `algorithm`'s kernel computes them as it writes y (shifted
// rows); false, nothing written, elsewhere.
bool conv2d_forward_moments(ConvAlgorithm algorithm, const Conv2dGeom& g, const float* x, const float* w,
                            const float* bias /*nullable*/, float* y, float* plane_moments);
void conv2d_backward_data(ConvAlgorithm algorithm, const Conv2dGeom& g, const float* dy, const float* w, float* dx);
// The data gradient written over dy, where dx has dy's shape and `algorithm`'s kernel
// for g copies each image of dy in before it writes that image of dx (shifted rows,
// stride 1); false, dy untouched, elsewhere.
bool conv2d_backward_data_in_place(ConvAlgorithm algorithm, const Conv2dGeom& g, float* dy_then_dx, const float* w);
// dx += the data gradient where `algorithm`'s kernel for g adds it as it writes dx (a
// stride-1 data gradient by Winograd or shifted rows); false, dx untouched, elsewhere.
bool conv2d_backward_data_add(ConvAlgorithm algorithm, const Conv2dGeom& g, const float* dy, const float* w,
                              float* dx);
// winograd.cpp: the forward image by image, and 16 images at a time in the lanes of
// AVX-512 vectors where the CPU has them
bool winograd_applies(const Conv2dGeom& g);
void winograd_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias /*nullable*/,
                      const Epilogue& epilogue, float* y);
bool winograd_lanes_available();
void winograd_lanes_forward(const Conv2dGeom& g, const float* x, const float* w, const float* bias /*nullable*/,
                            const Epilogue& epilogue, float* y);
void winograd_lanes_backward_filter(const Conv2dGeom& g, const float* x, const float* dy, float* dw);

void conv2d_backward_filter(ConvAlgorithm algorithm, const Conv2dGeom& g, const float* x, const float* dy, float* dw,
                            float* dbias /*nullable*/);

}  // namespace polyak::cpu
