// Elementwise ops: values, broadcasting, gradient checks, device parity.
#include <doctest/doctest.h>

#include "engine/backend.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "support/gradcheck.h"
#include "support/threads_scope.h"

using namespace polyak;
using polyak::testing::check_close;
using polyak::testing::ThreadsScope;
using polyak::testing::for_each_accelerator;
using polyak::testing::gradcheck;

TEST_CASE("elementwise: values of the binary ops") {
  const Tensor a = Tensor::from_vector({1, 2, 3, 4}, {2, 2});
  const Tensor b = Tensor::from_vector({2, 4, 8, 16}, {2, 2});
  check_close(a + b, std::vector<float>{3, 6, 11, 20});
  check_close(a - b, std::vector<float>{-1, -2, -5, -12});
  check_close(a * b, std::vector<float>{2, 8, 24, 64});
  check_close(a / b, std::vector<float>{0.5f, 0.5f, 0.375f, 0.25f});
  check_close(a.transpose(0, 1) + b, std::vector<float>{3, 7, 10, 20});  // strided operand
}

TEST_CASE("elementwise: broadcasting as bias and per-channel ops need it") {
  // (N,C,H,W) + (1,C,1,1): a per-channel bias.
  const Tensor x = Tensor::zeros({2, 3, 2, 2});
  const Tensor bias = Tensor::from_vector({1, 2, 3}, {1, 3, 1, 1});
  const std::vector<float> y = (x + bias).to_vector<float>();
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 3; ++c)
      for (int i = 0; i < 4; ++i) CHECK(y[(n * 3 + c) * 4 + i] == c + 1);
  // (2,3) * (3): a row vector; (2,1) - (3): outer difference.
  check_close(Tensor::ones({2, 3}) * Tensor::from_vector({1, 2, 3}, {3}), std::vector<float>{1, 2, 3, 1, 2, 3});
  check_close(Tensor::from_vector({10, 20}, {2, 1}) - Tensor::from_vector({1, 2, 3}, {3}),
              std::vector<float>{9, 8, 7, 19, 18, 17});
  CHECK(broadcast_shapes({5, 1, 4}, {3, 1}) == Shape{5, 3, 4});
  CHECK_THROWS_AS(Tensor::ones({2, 3}) + Tensor::ones({2}), std::invalid_argument);
  CHECK_THROWS_AS(Tensor::ones({2}) + Tensor::zeros({2}, DType::I64), std::invalid_argument);
}

// Large operands are cut into pieces shared by the threads, also when every dim merges
// into one row; the pieces' edges must not drop or repeat elements.
TEST_CASE("elementwise: large operands on several threads, pieces cut across rows") {
  const ThreadsScope three_threads(3);
  Rng rng(4);
  const Shape shape{3, 5, 97, 131};  // 190 605 elements: not a multiple of any piece
  const Tensor a = Tensor::normal(shape, 0.0f, 1.0f, rng), b = Tensor::normal(shape, 0.0f, 1.0f, rng);
  const Tensor row = Tensor::normal({1, 1, 1, 131}, 0.0f, 1.0f, rng);
  const std::vector<float> av = a.to_vector<float>(), bv = b.to_vector<float>(), rv = row.to_vector<float>();
  const std::vector<float> sum = (a + b).to_vector<float>(), scaled = (a * row).to_vector<float>();
  const std::vector<float> crossed = (a.transpose(2, 3).contiguous().transpose(2, 3) - b).to_vector<float>();
  // Filled and copied by the backend, read in place (to_vector copies too).
  Tensor zeroed = Tensor::full(shape, 1.0f);
  zeroed.zero_();
  Tensor copied = Tensor::empty(shape, DType::F32, Device::CPU);
  backend(Device::CPU).copy(copied.data<float>(), a.data<float>(), av.size() * sizeof(float));
  const float* zeros = zeroed.data<float>();
  size_t wrong_sum = 0, wrong_scaled = 0, wrong_crossed = 0, wrong_zeros = 0, wrong_copied = 0;
  for (size_t i = 0; i < av.size(); ++i) {
    wrong_sum += sum[i] != av[i] + bv[i];
    wrong_scaled += scaled[i] != av[i] * rv[i % 131];
    wrong_crossed += crossed[i] != av[i] - bv[i];
    wrong_zeros += zeros[i] != 0.0f;
    wrong_copied += copied.data<float>()[i] != a.data<float>()[i];
  }
  CHECK(wrong_sum == 0);
  CHECK(wrong_scaled == 0);
  CHECK(wrong_crossed == 0);
  CHECK(wrong_zeros == 0);
  CHECK(wrong_copied == 0);
}

TEST_CASE("elementwise: scalar and unary ops") {
  const Tensor x = Tensor::from_vector({1, 4, 9}, {3});
  check_close(x + 1.0f, std::vector<float>{2, 5, 10});
  check_close(x * 2.0f, std::vector<float>{2, 8, 18});
  check_close(10.0f - x, std::vector<float>{9, 6, 1});
  check_close(36.0f / x, std::vector<float>{36, 9, 4});
  check_close(pow_scalar(x, 1.5f), std::vector<float>{1, 8, 27}, 1e-5, 1e-5);
  check_close(sqrt(x), std::vector<float>{1, 2, 3});
  check_close(-x, std::vector<float>{-1, -4, -9});
  check_close(log(exp(x)), std::vector<float>{1, 4, 9}, 1e-5, 1e-5);
}

TEST_CASE("elementwise: multi_lerp moves every target towards the source in one pass") {
  ThreadsScope threads(2);
  const int64_t n = 5003;  // several blocks, and a ragged end
  Rng rng(7);
  const Tensor source = Tensor::normal({n}, 0.0f, 1.0f, rng);
  const std::vector<float> kept = {1.0f, 0.0f, 0.75f};
  std::vector<Tensor> before, target;
  MultiLerp m;
  m.count = static_cast<int>(kept.size());
  for (size_t k = 0; k < kept.size(); ++k) {
    before.push_back(Tensor::normal({n}, 0.0f, 1.0f, rng));
    target.push_back(before.back().clone());
    m.kept[k] = kept[k];
    m.target[k] = target[k].data<float>();
  }
  kernels(Device::CPU).multi_lerp(m, n, source.data<float>());
  CHECK(target[0].to_vector<float>() == before[0].to_vector<float>());  // kept = 1: bit for bit
  CHECK(target[1].to_vector<float>() == source.to_vector<float>());     // kept = 0: the source
  check_close(target[2], before[2] * 0.75f + source * 0.25f, 1e-7, 1e-6);
}

TEST_CASE("elementwise: gradient checks, including broadcast operands") {
  Rng rng(1);
  auto a = Tensor::normal({2, 3, 4}, 0, 1, rng).requires_grad_();
  auto b = Tensor::normal({3, 1}, 0, 1, rng).requires_grad_();
  auto pos = Tensor::uniform({3, 1}, 0.5f, 2.0f, rng).requires_grad_();
  gradcheck([](const std::vector<Tensor>& t) { return t[0] + t[1]; }, {a, b});
  gradcheck([](const std::vector<Tensor>& t) { return t[0] - t[1]; }, {a, b});
  gradcheck([](const std::vector<Tensor>& t) { return t[0] * t[1]; }, {a, b});
  gradcheck([](const std::vector<Tensor>& t) { return t[0] / t[1]; }, {a, pos});
  gradcheck([](const std::vector<Tensor>& t) { return t[1] / t[0]; }, {pos, a});
}

TEST_CASE("elementwise: gradient checks of scalar and unary maps") {
  Rng rng(2);
  auto x = Tensor::uniform({3, 4}, 0.5f, 2.0f, rng).requires_grad_();
  gradcheck([](const std::vector<Tensor>& t) { return t[0] + 3.0f; }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return t[0] * -2.0f; }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return 1.0f - t[0]; }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return 2.0f / t[0]; }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return pow_scalar(t[0], 2.5f); }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return -t[0]; }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return exp(t[0]); }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return log(t[0]); }, {x});
  gradcheck([](const std::vector<Tensor>& t) { return sqrt(t[0]); }, {x});
}

TEST_CASE("elementwise: CPU vs accelerator parity") {
  for_each_accelerator([](Device device) {
    Rng rng(3);
    const Tensor a = Tensor::normal({4, 3, 5}, 0, 1, rng), b = Tensor::uniform({3, 1}, 0.5f, 2.0f, rng);
    const Tensor da = a.to(device), db = b.to(device);
    check_close((da + db).to(Device::CPU), a + b, 1e-6, 1e-6);
    check_close((da - db).to(Device::CPU), a - b, 1e-6, 1e-6);
    check_close((da * db).to(Device::CPU), a * b, 1e-6, 1e-6);
    check_close((da / db).to(Device::CPU), a / b, 1e-6, 1e-5);
    check_close(exp(da).to(Device::CPU), exp(a), 1e-6, 1e-5);
    check_close(log(db).to(Device::CPU), log(b), 1e-6, 1e-5);
    check_close(sqrt(db).to(Device::CPU), sqrt(b), 1e-6, 1e-5);
    check_close(pow_scalar(db, 1.7f).to(Device::CPU), pow_scalar(b, 1.7f), 1e-6, 1e-5);
    check_close((2.0f / db - 1.0f).to(Device::CPU), 2.0f / b - 1.0f, 1e-6, 1e-5);
  });
}

TEST_CASE("elementwise: strided, broadcast, scalar and in-place ops on the accelerator match the CPU") {
  for_each_accelerator([](Device device) {
    Rng rng(14);
    const Tensor x = Tensor::normal({2, 3, 4, 5}, 0, 1, rng), bias = Tensor::normal({1, 3, 1, 1}, 0, 1, rng);
    const Tensor m = Tensor::normal({6, 7}, 0, 1, rng), row = Tensor::normal({7}, 0, 1, rng);
    const Tensor col = Tensor::normal({6, 1}, 0, 1, rng), pos = Tensor::uniform({6, 7}, 0.5f, 2.0f, rng);
    const Tensor dx = x.to(device), dbias = bias.to(device), dm = m.to(device), drow = row.to(device),
                 dcol = col.to(device), dpos = pos.to(device);
    // Broadcast patterns of a per-channel bias, a row vector, a column and an outer product.
    check_close((dx + dbias).to(Device::CPU), x + bias, 0, 0);
    check_close((dx * dbias).to(Device::CPU), x * bias, 0, 0);
    check_close((dm - drow).to(Device::CPU), m - row, 0, 0);
    check_close((dcol / dpos).to(Device::CPU), col / pos, 0, 0);
    check_close((dcol * drow).to(Device::CPU), col * row, 0, 0);
    // Non-contiguous operands and a strided copy (transpose, permute, step slices).
    check_close((dm.transpose(0, 1) + dpos.transpose(0, 1)).to(Device::CPU), m.transpose(0, 1) + pos.transpose(0, 1), 0,
                0);
    check_close(dx.permute({3, 1, 0, 2}).contiguous().to(Device::CPU), x.permute({3, 1, 0, 2}).contiguous(), 0, 0);
    check_close(dx.slice(3, 1, 5, 2).contiguous().to(Device::CPU), x.slice(3, 1, 5, 2).contiguous(), 0, 0);
    // Scalar and unary maps.
    check_close((dm + 0.5f).to(Device::CPU), m + 0.5f, 0, 0);
    check_close((dm * -3.0f).to(Device::CPU), m * -3.0f, 0, 0);
    check_close((1.5f - dm).to(Device::CPU), 1.5f - m, 0, 0);
    check_close((-dm).to(Device::CPU), -m, 0, 0);
    check_close(pow_scalar(dpos, -0.5f).to(Device::CPU), pow_scalar(pos, -0.5f), 1e-6, 1e-5);
    // In place: fill_, zero_, add_ (axpy), mul_, copy_ between layouts.
    Tensor a = m.clone(), da = dm.clone();
    a.add_(pos, -0.25f);
    da.add_(dpos, -0.25f);
    check_close(da.to(Device::CPU), a, 1e-7, 1e-6);
    a.mul_(2.0f);
    da.mul_(2.0f);
    check_close(da.to(Device::CPU), a, 1e-7, 1e-6);
    Tensor t = Tensor::zeros({7, 6}, DType::F32, device);
    t.copy_(dm.transpose(0, 1));
    check_close(t.to(Device::CPU), m.transpose(0, 1).contiguous(), 0, 0);
    t.fill_(2.5f);
    check_close(t.to(Device::CPU), std::vector<float>(42, 2.5f), 0, 0);
    t.zero_();
    check_close(t.to(Device::CPU), std::vector<float>(42, 0.0f), 0, 0);
  });
}

TEST_CASE("elementwise: gradient checks on the accelerator") {
  for_each_accelerator([](Device device) {
    Rng rng(15);
    auto a = Tensor::normal({2, 3, 4}, 0, 1, rng).to(device).requires_grad_();
    auto b = Tensor::normal({3, 1}, 0, 1, rng).to(device).requires_grad_();
    auto pos = Tensor::uniform({3, 1}, 0.5f, 2.0f, rng).to(device).requires_grad_();
    auto x = Tensor::uniform({3, 4}, 0.5f, 2.0f, rng).to(device).requires_grad_();
    gradcheck([](const std::vector<Tensor>& t) { return t[0] + t[1]; }, {a, b});
    gradcheck([](const std::vector<Tensor>& t) { return t[0] - t[1]; }, {a, b});
    gradcheck([](const std::vector<Tensor>& t) { return t[0] * t[1]; }, {a, b});
    gradcheck([](const std::vector<Tensor>& t) { return t[0] / t[1]; }, {a, pos});
    gradcheck([](const std::vector<Tensor>& t) { return 2.0f / t[0] - 1.0f; }, {x});
    gradcheck([](const std::vector<Tensor>& t) { return pow_scalar(t[0], 2.5f); }, {x});
    gradcheck([](const std::vector<Tensor>& t) { return exp(t[0]); }, {x});
    gradcheck([](const std::vector<Tensor>& t) { return log(t[0]); }, {x});
    gradcheck([](const std::vector<Tensor>& t) { return sqrt(t[0]); }, {x});
  });
}
