#include "support/gradcheck.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "engine/autograd.h"
#include "engine/backend.h"
#include "engine/cuda/settings.h"
#include "engine/ops.h"
#include "engine/rng.h"

namespace polyak::testing {

namespace {

double projected(const Tensor& out, const std::vector<float>& r) {
  const std::vector<float> values = out.to_vector<float>();
  double total = 0;
  for (size_t i = 0; i < values.size(); ++i) total += static_cast<double>(values[i]) * r[i];
  return total;
}

float read_element(const Tensor& t, int64_t flat) {
  float value;
  backend(t.device()).copy_to_host(&value, t.data<float>() + flat, sizeof(float));
  return value;
}

void write_element(const Tensor& t, int64_t flat, float value) {
  backend(t.device()).copy_from_host(t.data<float>() + flat, &value, sizeof(float));
}

}  // namespace

void gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, const std::vector<Tensor>& inputs,
               const GradCheckOptions& options) {
  Rng rng(options.seed);
  for (const Tensor& x : inputs) {
    if (!x.defined()) continue;  // an absent optional input (a conv without bias)
    REQUIRE_MESSAGE((!x.requires_grad() || x.is_contiguous()), "gradcheck needs contiguous inputs");
    if (x.requires_grad()) x.set_grad({});
  }
  const Tensor out = f(inputs);
  std::vector<float> r(static_cast<size_t>(out.numel()));
  for (float& v : r) v = rng.normal();
  out.backward(Tensor::from_vector(r, out.shape(), out.device()));

  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    REQUIRE_MESSAGE(x.grad().defined(), "input " << k << " received no gradient");
    const std::vector<float> analytic = x.grad().to_vector<float>();
    std::vector<int64_t> elements(static_cast<size_t>(x.numel()));
    for (size_t i = 0; i < elements.size(); ++i) elements[i] = static_cast<int64_t>(i);
    if (static_cast<int64_t>(elements.size()) > options.max_elements) {
      for (int64_t i = 0; i < options.max_elements; ++i)
        std::swap(elements[i], elements[i + rng.below(elements.size() - i)]);
      elements.resize(options.max_elements);
    }
    for (int64_t j : elements) {
      const float original = read_element(x, j);
      double plus, minus;
      {
        NoGradGuard no_grad;
        write_element(x, j, original + options.eps);
        plus = projected(f(inputs), r);
        write_element(x, j, original - options.eps);
        minus = projected(f(inputs), r);
        write_element(x, j, original);
      }
      const double numeric = (plus - minus) / (2.0 * options.eps);
      const double a = analytic[j];
      const double tolerance = options.atol + options.rtol * std::max(std::abs(a), std::abs(numeric));
      CHECK_MESSAGE(std::abs(a - numeric) <= tolerance,
                    "input " << k << " element " << j << ": analytic " << a << " vs numeric " << numeric);
    }
  }
}

void check_close(const Tensor& actual, const std::vector<float>& expected, double atol, double rtol) {
  const std::vector<float> got = actual.to_vector<float>();
  REQUIRE(got.size() == expected.size());
  double worst = 0;
  size_t worst_at = 0;
  bool ok = true;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(static_cast<double>(got[i]) - expected[i]);
    const bool finite = std::isfinite(got[i]) == std::isfinite(expected[i]);
    if (!finite || err > atol + rtol * std::abs(expected[i])) {
      if (ok || err > worst) {
        worst = err;
        worst_at = i;
      }
      ok = false;
    }
  }
  CHECK_MESSAGE(ok, "element " << worst_at << ": got " << got[worst_at] << ", expected " << expected[worst_at]
                               << " (|diff| " << worst << ")");
}

void check_close(const Tensor& actual, const Tensor& expected, double atol, double rtol) {
  REQUIRE_MESSAGE(actual.shape() == expected.shape(),
                  "shape " << shape_str(actual.shape()) << " vs " << shape_str(expected.shape()));
  check_close(actual, expected.to_vector<float>(), atol, rtol);
}

void check_epilogue_results(const EpilogueResults& got, const EpilogueResults& want, double tolerance) {
  check_close(got.y.to(Device::CPU), want.y.to(Device::CPU), tolerance, tolerance);
  check_close(got.dx.to(Device::CPU), want.dx.to(Device::CPU), tolerance, tolerance);
  check_close(got.dw.to(Device::CPU), want.dw.to(Device::CPU), 10 * tolerance, tolerance);
  check_close(got.db.to(Device::CPU), want.db.to(Device::CPU), 10 * tolerance, tolerance);
  REQUIRE(got.dr.defined() == want.dr.defined());
  if (got.dr.defined()) check_close(got.dr.to(Device::CPU), want.dr.to(Device::CPU), tolerance, tolerance);
}

void for_each_accelerator(const std::function<void(Device)>& body) {
  if (!device_available(Device::CUDA)) {
    // On a GPU machine (tests/gpu/run.sh sets POLYAK_REQUIRE_GPU=1) a skip would hide a
    // broken driver or runtime behind a passing suite: fail instead.
    const char* require = std::getenv("POLYAK_REQUIRE_GPU");
    if (require && std::string(require) == "1") {
      FAIL("POLYAK_REQUIRE_GPU=1 but the GPU is not available: " << cuda_unavailable_reason());
    }
    MESSAGE("no GPU in this build or machine: CPU-vs-GPU parity skipped (" << cuda_unavailable_reason() << ")");
    return;
  }
  body(Device::CUDA);
}

std::string real_data_path(const std::string& relative) {
  const char* env = std::getenv("POLYAK_DATA");
  const std::filesystem::path root = env && *env ? env : POLYAK_DEFAULT_DATA;
  const std::filesystem::path path = root / relative;
  if (std::filesystem::exists(path)) return path.string();
  const char* ci = std::getenv("CI");
  const std::string why = "real data not found at " + path.string() + " (set POLYAK_DATA to the data folder)";
  if (ci && std::string(ci) == "true") {
    FAIL(why);
  }
  MESSAGE("skipped: " << why);
  return "";
}

}  // namespace polyak::testing
