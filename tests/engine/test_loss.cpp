// log_softmax and cross_entropy: a 2x3 example worked by hand, label smoothing,
// finite-difference gradients, numerical stability, CPU-vs-GPU parity and the checks
// on labels and shapes.
#include <doctest/doctest.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/parallel.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;
using polyak::testing::gradcheck;

namespace {

// Row 0 = (1, 2, 3): log-sum-exp = 3 + log(1 + e^-1 + e^-2) = 3.4076060.
// Row 1 = (1, 1, 1): log-sum-exp = 1 + log 3 = 2.0986123.
Tensor known_logits() { return Tensor::from_vector({1, 2, 3, 1, 1, 1}, {2, 3}); }
Tensor labels_of(const std::vector<int64_t>& values, Device device = Device::CPU) {
  return Tensor::from_data(values.data(), {static_cast<int64_t>(values.size())}, device);
}

}  // namespace

TEST_CASE("log_softmax: known 2x3 example") {
  const Tensor y = log_softmax(known_logits());
  CHECK(y.shape() == Shape{2, 3});
  check_close(y, {-2.4076060f, -1.4076060f, -0.4076060f, -1.0986123f, -1.0986123f, -1.0986123f}, 1e-6);
}

TEST_CASE("log_softmax: stable for large logits") {
  const Tensor y = log_softmax(Tensor::from_vector({1000, 1001, 1002, -1000, -1000, -1000}, {2, 3}));
  check_close(y, {-2.4076060f, -1.4076060f, -0.4076060f, -1.0986123f, -1.0986123f, -1.0986123f}, 1e-4);
}

TEST_CASE("cross_entropy: known 2x3 example, with and without label smoothing") {
  const Tensor labels = labels_of({2, 0});
  // Plain: mean(-log p) = (0.4076060 + 1.0986123) / 2.
  const Tensor loss = cross_entropy(known_logits(), labels);
  CHECK(loss.dim() == 0);
  CHECK(loss.item() == doctest::Approx(0.7531091).epsilon(1e-6));
  // s = 0.1, C = 3: t = 0.9 onehot + 1/30.
  //   row 0: 0.9 * 0.4076060 + (1/30) * 4.2228179 = 0.5076060
  //   row 1: 0.9 * 1.0986123 + (1/30) * 3.2958369 = 1.0986123
  const Tensor logits = known_logits().requires_grad_();
  const Tensor smooth = cross_entropy(logits, labels, 0.1f);
  CHECK(smooth.item() == doctest::Approx(0.8031091).epsilon(1e-6));
  // dlogits = (softmax - t) / N.
  smooth.backward();
  check_close(logits.grad(), {0.0283486f, 0.1056976f, -0.1340462f, -0.3f, 0.15f, 0.15f}, 1e-6);
}

TEST_CASE("cross_entropy: gradient is scaled by the upstream gradient") {
  const Tensor logits = known_logits().requires_grad_();
  const Tensor loss = cross_entropy(logits, labels_of({2, 0}));
  loss.backward(Tensor::full({}, 2.0f));
  // softmax row 0 = (0.0900306, 0.2447285, 0.6652410), row 1 = 1/3 each; times 2/N = 1.
  check_close(logits.grad(), {0.0900306f, 0.2447285f, -0.3347590f, -0.6666667f, 0.3333333f, 0.3333333f}, 1e-6);
}

TEST_CASE("log_softmax and cross_entropy gradcheck") {
  Rng rng(5);
  SUBCASE("log_softmax") {
    const Tensor x = Tensor::normal({4, 6}, 0.0f, 2.0f, rng).requires_grad_();
    gradcheck([](const std::vector<Tensor>& in) { return log_softmax(in[0]); }, {x});
  }
  SUBCASE("log_softmax of a non-contiguous view") {
    const Tensor x = Tensor::normal({5, 3}, 0.0f, 1.0f, rng).requires_grad_();
    gradcheck([](const std::vector<Tensor>& in) { return log_softmax(in[0].transpose(0, 1)); }, {x});
  }
  SUBCASE("cross_entropy") {
    const Tensor x = Tensor::normal({5, 4}, 0.0f, 2.0f, rng).requires_grad_();
    const Tensor labels = labels_of({0, 3, 1, 1, 2});
    gradcheck([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], labels); }, {x});
  }
  SUBCASE("cross_entropy with label smoothing") {
    const Tensor x = Tensor::normal({5, 4}, 0.0f, 2.0f, rng).requires_grad_();
    const Tensor labels = labels_of({2, 0, 3, 3, 1});
    gradcheck([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], labels, 0.1f); }, {x});
  }
}

TEST_CASE("cross_entropy: equals the mean NLL of log_softmax") {
  Rng rng(8);
  const Tensor x = Tensor::normal({32, 10}, 0.0f, 3.0f, rng);
  std::vector<int64_t> labels(32);
  for (auto& l : labels) l = static_cast<int64_t>(rng.below(10));
  const std::vector<float> lp = log_softmax(x).to_vector<float>();
  double expected = 0;
  for (size_t r = 0; r < labels.size(); ++r) expected -= lp[r * 10 + labels[r]];
  expected /= 32;
  CHECK(cross_entropy(x, labels_of(labels)).item() == doctest::Approx(expected).epsilon(1e-5));
}

TEST_CASE("log_softmax and cross_entropy: results do not depend on the thread count") {
  Rng rng(12);
  const Tensor x = Tensor::normal({512, 10}, 0.0f, 3.0f, rng);
  std::vector<int64_t> labels(512);
  for (auto& l : labels) l = static_cast<int64_t>(rng.below(10));
  const int saved = num_threads();
  std::vector<std::vector<float>> results;
  for (const int threads : {1, 3}) {
    set_num_threads(threads);
    const Tensor xg = x.clone().requires_grad_();
    const Tensor loss = cross_entropy(xg, labels_of(labels), 0.1f);
    loss.backward();
    std::vector<float> all = xg.grad().to_vector<float>();
    all.push_back(loss.item());
    const std::vector<float> lp = log_softmax(x).to_vector<float>();
    all.insert(all.end(), lp.begin(), lp.end());
    results.push_back(all);
  }
  set_num_threads(saved);
  CHECK(results[0] == results[1]);
}

TEST_CASE("log_softmax and cross_entropy parity: CPU vs accelerator") {
  polyak::testing::for_each_accelerator([](Device device) {
    Rng rng(9);
    const Tensor x = Tensor::normal({64, 10}, 0.0f, 3.0f, rng);
    const Tensor dy = Tensor::normal({64, 10}, 0.0f, 1.0f, rng);
    std::vector<int64_t> labels(64);
    for (auto& l : labels) l = static_cast<int64_t>(rng.below(10));

    // log_softmax forward and backward.
    const Tensor xc = x.clone().requires_grad_(), xd = x.clone().to(device).requires_grad_();
    const Tensor yc = log_softmax(xc), yd = log_softmax(xd);
    yc.backward(dy);
    yd.backward(dy.to(device));
    check_close(yd.to(Device::CPU), yc, 1e-5, 1e-5);
    check_close(xd.grad().to(Device::CPU), xc.grad(), 1e-5, 1e-4);

    for (const float smoothing : {0.0f, 0.1f}) {
      CAPTURE(smoothing);
      const Tensor lc = x.clone().requires_grad_(), ld = x.clone().to(device).requires_grad_();
      const Tensor loss_c = cross_entropy(lc, labels_of(labels), smoothing);
      const Tensor loss_d = cross_entropy(ld, labels_of(labels, device), smoothing);
      loss_c.backward(Tensor::full({}, 1.5f));
      loss_d.backward(Tensor::full({}, 1.5f, device));
      CHECK(loss_d.device() == device);
      CHECK(loss_d.item() == doctest::Approx(loss_c.item()).epsilon(1e-5));
      check_close(ld.grad().to(Device::CPU), lc.grad(), 1e-6, 1e-4);
    }
  });
}

TEST_CASE("cross_entropy: label and shape errors") {
  const Tensor logits = known_logits();
  auto message_of = [](auto&& call) -> std::string {
    try {
      call();
    } catch (const std::out_of_range& e) {
      return e.what();
    }
    return "";
  };
  const std::string too_big = message_of([&] { cross_entropy(logits, labels_of({0, 3})); });
  CHECK(too_big.find("row 1") != std::string::npos);
  CHECK(too_big.find("label 3") != std::string::npos);
  const std::string negative = message_of([&] { cross_entropy(logits, labels_of({-1, 0})); });
  CHECK(negative.find("row 0") != std::string::npos);
  CHECK(negative.find("label -1") != std::string::npos);

  const int32_t narrow[2] = {0, 1};
  CHECK_THROWS_AS(cross_entropy(logits, Tensor::from_data(narrow, {2})), std::invalid_argument);  // int32
  CHECK_THROWS_AS(cross_entropy(logits, Tensor::zeros({2})), std::invalid_argument);             // float
  CHECK_THROWS_AS(cross_entropy(logits, labels_of({0, 1, 2})), std::invalid_argument);           // N mismatch
  CHECK_THROWS_AS(cross_entropy(logits, labels_of({0, 1}).reshape({2, 1})), std::invalid_argument);
  CHECK_THROWS_AS(cross_entropy(Tensor::zeros({6}), labels_of({0, 1})), std::invalid_argument);  // 1-D logits
  CHECK_THROWS_AS(cross_entropy(Tensor::zeros({0, 3}), Tensor::empty({0}, DType::I64)), std::invalid_argument);   // empty batch
  CHECK_THROWS_AS(cross_entropy(logits, labels_of({0, 1}), 1.5f), std::invalid_argument);
  CHECK_THROWS_AS(cross_entropy(logits, labels_of({0, 1}), -0.1f), std::invalid_argument);
  CHECK_THROWS_AS(log_softmax(Tensor::zeros({2, 3, 4})), std::invalid_argument);
  CHECK_THROWS_AS(log_softmax(Tensor::zeros({3})), std::invalid_argument);
}

TEST_CASE("cross_entropy on the accelerator: bad labels throw the CPU's message, many classes, gradcheck") {
  polyak::testing::for_each_accelerator([](Device device) {
    const Tensor logits = known_logits().to(device);
    auto message_of = [](auto&& call) -> std::string {
      try {
        call();
      } catch (const std::out_of_range& e) {
        return e.what();
      }
      return "";
    };
    for (const auto& [bad_labels, row, value] : {std::tuple{std::vector<int64_t>{0, 3}, "row 1", "label 3"},
                                                 std::tuple{std::vector<int64_t>{-1, 7}, "row 0", "label -1"}}) {
      const std::vector<int64_t>& labels = bad_labels;  // (clang 14 cannot capture a structured binding)
      const std::string cpu = message_of([&] { cross_entropy(known_logits(), labels_of(labels)); });
      const std::string gpu = message_of([&] { cross_entropy(logits, labels_of(labels, device)); });
      CHECK(gpu == cpu);
      CHECK(gpu.find(row) != std::string::npos);
      CHECK(gpu.find(value) != std::string::npos);
    }
    // After an error the next call is clean.
    CHECK(cross_entropy(logits, labels_of({2, 0}, device)).item() ==
          doctest::Approx(cross_entropy(known_logits(), labels_of({2, 0})).item()).epsilon(1e-6));

    // 1000 classes: a warp strides over many columns; large logits stay finite.
    Rng rng(24);
    const Tensor big = Tensor::normal({33, 1000}, 0.0f, 30.0f, rng);
    std::vector<int64_t> labels(33);
    for (auto& l : labels) l = static_cast<int64_t>(rng.below(1000));
    check_close(log_softmax(big.to(device)).to(Device::CPU), log_softmax(big), 1e-4, 1e-5);
    CHECK(cross_entropy(big.to(device), labels_of(labels, device), 0.2f).item() ==
          doctest::Approx(cross_entropy(big, labels_of(labels), 0.2f).item()).epsilon(1e-5));

    const Tensor x = Tensor::normal({5, 4}, 0.0f, 2.0f, rng).to(device).requires_grad_();
    const Tensor l = labels_of({2, 0, 3, 3, 1}, device);
    gradcheck([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], l, 0.1f); }, {x});
    gradcheck([](const std::vector<Tensor>& in) { return log_softmax(in[0]); }, {x});
  });
}
