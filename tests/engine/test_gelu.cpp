// GELU: values against the closed form, gradient check, device parity; and the host
// fallback every op without a kernel on a device takes (GELU is the example op).
#include <doctest/doctest.h>

#include <stdexcept>

#include "engine/kernels.h"
#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "engine/ops/op_helpers.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;
using polyak::testing::for_each_accelerator;
using polyak::testing::gradcheck;

TEST_CASE("gelu: values and slopes match x * Phi(x) (torch.nn.functional.gelu)") {
  // torch.nn.functional.gelu(torch.tensor([-3., -1., 0., 1., 2.], dtype=torch.float64))
  Tensor x = Tensor::from_vector({-3, -1, 0, 1, 2}, {5}).requires_grad_();
  const Tensor y = gelu(x);
  check_close(y, std::vector<float>{-0.0040496934f, -0.15865525f, 0.0f, 0.84134475f, 1.9544997f}, 1e-7, 1e-6);
  sum(y).backward();
  // Phi(x) + x phi(x): at 0 one half, at 1 0.8413447 + 0.2419707.
  check_close(x.grad(), std::vector<float>{-0.01194565f, -0.08331547f, 0.5f, 1.08331547f, 1.0852318f}, 1e-6, 1e-5);
}

TEST_CASE("gelu: gradient check, and the nn.GELU layer is the op") {
  Rng rng(21);
  const Tensor x = Tensor::normal({3, 4, 5}, 0, 2, rng).requires_grad_();
  gradcheck([](const std::vector<Tensor>& t) { return gelu(t[0]); }, {x});
  nn::GELU layer;
  check_close(layer.forward(x), gelu(x), 0, 0);
}

TEST_CASE("gelu: CPU vs accelerator parity") {
  for_each_accelerator([](Device device) {
    Rng rng(22);
    Tensor x = Tensor::normal({4, 8, 5, 5}, 0, 2, rng).requires_grad_();
    Tensor xd = x.detach().to(device).requires_grad_();
    const Tensor y = gelu(x), yd = gelu(xd);
    check_close(yd.to(Device::CPU), y, 1e-6, 1e-5);
    sum(y * y).backward();
    sum(yd * yd).backward();
    check_close(xd.grad().to(Device::CPU), x.grad(), 1e-6, 1e-5);
  });
}

TEST_CASE("an op whose kernel the table lacks runs the reference, and strict mode refuses") {
  Kernels without_gelu = kernels(Device::CPU);
  without_gelu.gelu_forward = nullptr;
  Rng rng(23);
  Tensor x = Tensor::normal({257}, 0, 1, rng), y = Tensor::empty({257});
  const auto run = [&] {
    detail::call_kernel(without_gelu, Device::CPU, &Kernels::gelu_forward, "gelu_forward", {&x}, {&y},
                        [&](const Kernels& k) { k.gelu_forward(x.numel(), x.data<float>(), y.data<float>()); });
  };
  run();
  Tensor want = Tensor::empty({257});
  reference_kernels().gelu_forward(257, x.data<float>(), want.data<float>());
  check_close(y, want, 0, 0);  // the reference ran
  set_strict_kernels(true);
  CHECK_THROWS_AS(run(), std::runtime_error);
  set_strict_kernels(false);
}
