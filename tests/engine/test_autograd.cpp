// Autograd semantics: the tape, accumulation, no-grad, detach and freeing the graph.
#include <doctest/doctest.h>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;

TEST_CASE("autograd: shared sub-expressions receive the sum of their uses") {
  // y = x*x + x, reused x: dy/dx = 2x + 1. z = (y * y) sums through y twice.
  Tensor x = Tensor::from_vector({1, 2, -3}, {3}).requires_grad_();
  const Tensor y = x * x + x;
  const Tensor z = sum(y * y);
  z.backward();
  // dz/dx = 2y (2x + 1)
  const std::vector<float> xv{1, 2, -3};
  std::vector<float> expected;
  for (float v : xv) expected.push_back(2 * (v * v + v) * (2 * v + 1));
  check_close(x.grad(), expected);
}

namespace {

// y = k x through a summing backward, which adds k * dy into the sum it is handed when
// `add_into_sums`, else returns k * dy as a plain backward does; counts the sums handed.
Tensor scaled(const Tensor& x, float k, bool add_into_sums, int& sums_handed) {
  Tensor y = (x * k).detach();
  record_summing(y, "scaled", {x}, [k, add_into_sums, &sums_handed](const Tensor& grad, const std::vector<Tensor>& sums) {
    const Tensor dx = grad * k;
    if (!sums[0].defined()) return std::vector<Tensor>{dx};
    ++sums_handed;
    if (!add_into_sums) return std::vector<Tensor>{dx};
    Tensor sum = sums[0];
    sum.add_(dx);
    return std::vector<Tensor>{sum};
  });
  return y;
}

}  // namespace

TEST_CASE("autograd: a summing backward adds into the sum the walk holds, only where nothing else sees it") {
  const Tensor x = Tensor::from_vector({1, -2}, {2}).requires_grad_();
  int sums_handed = 0;
  SUBCASE("a sum held only by the walk is handed over") {
    for (const bool add_into_sums : {true, false}) {
      CAPTURE(add_into_sums);
      sums_handed = 0;
      x.set_grad({});
      const Tensor h = x * 2.0f;
      // The walk reaches h * 5 first (it is the later input of the sum), whose backward
      // makes a fresh gradient for h: the sum that `scaled` is handed.
      sum(scaled(h, 3.0f, add_into_sums, sums_handed) + h * 5.0f).backward();
      CHECK(sums_handed == 1);
      check_close(x.grad(), std::vector<float>{16, 16});  // 2 * (3 + 5), added in place or by the walk
    }
  }
  SUBCASE("a sum another pending gradient shares is not") {
    const Tensor h = x * 2.0f;
    // h + c hands h the very tensor that `scaled` receives as its own gradient.
    sum(scaled(h, 3.0f, true, sums_handed) + (h + Tensor::ones({2}))).backward();
    CHECK(sums_handed == 0);
    check_close(x.grad(), std::vector<float>{8, 8});  // 2 * (3 + 1)
  }
}

TEST_CASE("autograd: gradients accumulate across backward calls until zeroed") {
  Tensor w = Tensor::from_vector({1, 2}, {2}).requires_grad_();
  sum(w * 3.0f).backward();
  check_close(w.grad(), std::vector<float>{3, 3});
  sum(w * w).backward();
  check_close(w.grad(), std::vector<float>{5, 7});
  w.grad().zero_();
  sum(w).backward();
  check_close(w.grad(), std::vector<float>{1, 1});
  w.set_grad({});
  sum(w * 2.0f).backward();
  check_close(w.grad(), std::vector<float>{2, 2});
}

TEST_CASE("autograd: no-grad scope records nothing") {
  Tensor w = Tensor::ones({2}).requires_grad_();
  {
    NoGradGuard guard;
    CHECK(!grad_enabled());
    const Tensor y = w * 2.0f;
    CHECK(!y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
    CHECK_THROWS_AS(sum(y).backward(), std::logic_error);
  }
  CHECK(grad_enabled());
  CHECK((w * 2.0f).requires_grad());
}

TEST_CASE("autograd: detach cuts the graph but shares the data") {
  Tensor w = Tensor::from_vector({1, 2}, {2}).requires_grad_();
  const Tensor d = (w * 2.0f).detach();
  CHECK(!d.requires_grad());
  CHECK(d.is_leaf());
  const Tensor y = sum(w * d);  // d acts as a constant
  y.backward();
  check_close(w.grad(), std::vector<float>{2, 4});
}

TEST_CASE("autograd: backward frees the graph and its saved tensors") {
  Tensor w = Tensor::from_vector({1, 2, 3}, {3}).requires_grad_();
  std::weak_ptr<Storage> saved;
  Tensor loss;
  {
    const Tensor h = exp(w);  // exp saves its output for backward
    saved = h.storage();
    loss = sum(h * 2.0f);
  }
  CHECK(!saved.expired());  // held by the graph
  loss.backward();
  CHECK(saved.expired());   // released with the graph
  CHECK(loss.grad_fn()->released);
  CHECK_THROWS_AS(loss.backward(), std::logic_error);
}

TEST_CASE("autograd: the graph keeps only what the closures save, not every intermediate result") {
  // y = relu(w * 3): relu keeps its output, and w * 3 saves nothing of its own, so the
  // product is freed as soon as the forward code drops it.
  Tensor w = Tensor::from_vector({1, -2, 3}, {3}).requires_grad_();
  std::weak_ptr<Storage> product;
  Tensor loss;
  {
    const Tensor tripled = w * 3.0f;
    product = tripled.storage();
    loss = sum(relu(tripled));
  }
  CHECK(product.expired());
  loss.backward();
  check_close(w.grad(), std::vector<float>{3, 0, 3});
}

TEST_CASE("autograd: leaves that do not require grad get none; shape errors are clear") {
  Tensor a = Tensor::from_vector({1, 2}, {2}).requires_grad_();
  const Tensor b = Tensor::from_vector({3, 4}, {2});
  sum(a * b).backward();
  CHECK(!b.grad().defined());
  check_close(a.grad(), std::vector<float>{3, 4});
  const Tensor y = a * 2.0f;
  CHECK_THROWS_AS(y.backward(), std::invalid_argument);  // not one element
  CHECK_THROWS_AS(y.backward(Tensor::ones({3})), std::invalid_argument);
  CHECK_THROWS_AS((a * 2.0f).requires_grad_(false), std::logic_error);
}

TEST_CASE("autograd: a deep chain does not overflow the stack") {
  Tensor x = Tensor::ones({1}).requires_grad_();
  Tensor y = x;
  for (int i = 0; i < 20000; ++i) y = y * 1.0f;
  y.backward();
  check_close(x.grad(), std::vector<float>{1});
}

TEST_CASE("autograd: views are differentiable") {
  Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2}).requires_grad_();
  const Tensor y = sum(x.slice(1, 3).transpose(0, 1).reshape({4}) * Tensor::from_vector({1, 2, 3, 4}, {4}));
  y.backward();
  // slice rows 1..2 = [[3,4],[5,6]]; transpose -> [[3,5],[4,6]] -> flat weights 1..4
  check_close(x.grad(), std::vector<float>{0, 0, 1, 3, 2, 4});
}
