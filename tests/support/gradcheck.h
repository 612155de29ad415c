// Test support shared by every suite: the finite-difference gradient checker, tensor
// comparison, the CPU-vs-accelerator parity driver and the location of the real data.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace polyak::testing {

struct GradCheckOptions {
  float eps = 1e-2f;       // finite-difference step
  double atol = 2e-3;      // |analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)
  double rtol = 2e-2;
  int max_elements = 48;   // elements checked per input (chosen at random when there are more)
  uint64_t seed = 7;
};

// Checks the autograd gradients of L = sum(f(inputs) * R), for a fixed random R, with
// respect to every input that requires a gradient, against central finite differences
// (L(x + eps e_j) - L(x - eps e_j)) / 2 eps, evaluated in double precision from the
// float outputs. Works on any device: elements are perturbed through the backend.
// Reports each mismatch through doctest with the input index and element.
void gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
               const GradCheckOptions& options = {});

// Elementwise |a - b| <= atol + rtol * |b|; reports the worst element.
void check_close(const Tensor& actual, const Tensor& expected, double atol = 1e-5, double rtol = 1e-5);
void check_close(const Tensor& actual, const std::vector<float>& expected, double atol = 1e-5, double rtol = 1e-5);

// What a fused op with a relu(y + residual) epilogue produces for one upstream gradient:
// its output and the gradients of input, weight, bias and residual (dr undefined
// without a residual).
struct EpilogueResults {
  Tensor y, dx, dw, db, dr;
};

// got against want on the CPU: y, dx and dr to (tolerance, tolerance), the parameter
// gradients (sums over the batch) to ten times the absolute tolerance.
void check_epilogue_results(const EpilogueResults& got, const EpilogueResults& want, double tolerance);

// Calls body(device) for every available non-CPU device; with none, says so through a
// doctest MESSAGE so that the parity test skips cleanly.
void for_each_accelerator(const std::function<void(Device)>& body);

// The real-data folder (POLYAK_DATA, else ../shared/data beside the checkout) when it
// holds `relative`; otherwise "" after a skip message, or a failure when CI=true.
std::string real_data_path(const std::string& relative);

}  // namespace polyak::testing
