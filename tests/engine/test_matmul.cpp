// matmul and linear: values, gradient checks, device parity.
#include <doctest/doctest.h>

#include "engine/ops.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;
using polyak::testing::for_each_accelerator;
using polyak::testing::gradcheck;

TEST_CASE("matmul: values of a small product") {
  const Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  const Tensor b = Tensor::from_vector({7, 8, 9, 10, 11, 12}, {3, 2});
  check_close(matmul(a, b), std::vector<float>{58, 64, 139, 154});
  check_close(matmul(b.transpose(0, 1), a.transpose(0, 1)), std::vector<float>{58, 139, 64, 154});
  CHECK_THROWS_AS(matmul(a, a), std::invalid_argument);
}

TEST_CASE("linear: y = x W^T + b as torch.nn.Linear") {
  const Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  const Tensor w = Tensor::from_vector({1, 0, -1, 2, 1, 0}, {2, 3});  // (out=2, in=3)
  const Tensor b = Tensor::from_vector({0.5f, -1}, {2});
  check_close(linear(x, w, b), std::vector<float>{-1.5f, 3, -1.5f, 12});
  check_close(linear(x, w), std::vector<float>{-2, 4, -2, 13});
  CHECK_THROWS_AS(linear(x, Tensor::ones({2, 4})), std::invalid_argument);
  CHECK_THROWS_AS(linear(x, w, Tensor::ones({3})), std::invalid_argument);
}

TEST_CASE("matmul and linear: a large product split across threads matches a naive loop") {
  Rng rng(6);
  const int64_t M = 301, K = 77, N = 129;
  const Tensor a = Tensor::normal({M, K}, 0, 1, rng), b = Tensor::normal({K, N}, 0, 1, rng);
  const std::vector<float> av = a.to_vector<float>(), bv = b.to_vector<float>();
  std::vector<float> expected(M * N, 0.0f);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) expected[i * N + j] += av[i * K + k] * bv[k * N + j];
  check_close(matmul(a, b), expected, 1e-4, 1e-4);
}

TEST_CASE("matmul and linear: gradient checks") {
  Rng rng(7);
  auto a = Tensor::normal({4, 5}, 0, 1, rng).requires_grad_();
  auto b = Tensor::normal({5, 3}, 0, 1, rng).requires_grad_();
  gradcheck([](const std::vector<Tensor>& t) { return matmul(t[0], t[1]); }, {a, b});
  auto x = Tensor::normal({6, 5}, 0, 1, rng).requires_grad_();
  auto w = Tensor::normal({3, 5}, 0, 1, rng).requires_grad_();
  auto bias = Tensor::normal({3}, 0, 1, rng).requires_grad_();
  gradcheck([](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); }, {x, w, bias});
  gradcheck([](const std::vector<Tensor>& t) { return linear(t[0], t[1]); }, {x, w});
}

TEST_CASE("matmul and linear: CPU vs accelerator parity") {
  for_each_accelerator([](Device device) {
    Rng rng(8);
    Tensor x = Tensor::normal({32, 64}, 0, 1, rng).requires_grad_();
    Tensor w = Tensor::normal({10, 64}, 0, 1, rng).requires_grad_();
    Tensor b = Tensor::normal({10}, 0, 1, rng).requires_grad_();
    Tensor dx = x.detach().to(device).requires_grad_(), dw = w.detach().to(device).requires_grad_(),
           db = b.detach().to(device).requires_grad_();
    const Tensor y = linear(x, w, b), dy = linear(dx, dw, db);
    check_close(dy.to(Device::CPU), y, 1e-4, 1e-4);
    sum(y * y).backward();
    sum(dy * dy).backward();
    check_close(dx.grad().to(Device::CPU), x.grad(), 1e-3, 1e-4);
    check_close(dw.grad().to(Device::CPU), w.grad(), 1e-3, 1e-4);
    check_close(db.grad().to(Device::CPU), b.grad(), 1e-3, 1e-4);
    const Tensor m = Tensor::normal({33, 17}, 0, 1, rng), n = Tensor::normal({17, 9}, 0, 1, rng);
    check_close(matmul(m.to(device), n.to(device)).to(Device::CPU), matmul(m, n), 1e-4, 1e-4);
  });
}

TEST_CASE("matmul: transposed operands and odd sizes on the accelerator") {
  for_each_accelerator([](Device device) {
    Rng rng(18);
    const Tensor a = Tensor::normal({37, 19}, 0, 1, rng), b = Tensor::normal({23, 37}, 0, 1, rng);
    // a^T b^T: both operands are transposed views (gemm's trans flags).
    check_close(matmul(a.to(device).transpose(0, 1), b.to(device).transpose(0, 1)).to(Device::CPU),
                matmul(a.transpose(0, 1), b.transpose(0, 1)), 1e-4, 1e-4);
    const Tensor v = Tensor::normal({1, 37}, 0, 1, rng);
    check_close(matmul(v.to(device), a.to(device)).to(Device::CPU), matmul(v, a), 1e-4, 1e-4);
  });
}

TEST_CASE("matmul and linear: gradient checks on the accelerator") {
  for_each_accelerator([](Device device) {
    Rng rng(19);
    auto a = Tensor::normal({4, 5}, 0, 1, rng).to(device).requires_grad_();
    auto b = Tensor::normal({5, 3}, 0, 1, rng).to(device).requires_grad_();
    gradcheck([](const std::vector<Tensor>& t) { return matmul(t[0], t[1]); }, {a, b});
    auto x = Tensor::normal({6, 5}, 0, 1, rng).to(device).requires_grad_();
    auto w = Tensor::normal({3, 5}, 0, 1, rng).to(device).requires_grad_();
    auto bias = Tensor::normal({3}, 0, 1, rng).to(device).requires_grad_();
    gradcheck([](const std::vector<Tensor>& t) { return linear(t[0], t[1], t[2]); }, {x, w, bias});
  });
}
