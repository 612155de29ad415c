// dropout: keep rate, the exact Philox words behind the mask, determinism per seed,
// the identity cases, gradients, CPU-vs-GPU parity and the range of p.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <stdexcept>
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

// The mask of a dropout over ones: 1 where kept (y = 1 / (1 - p)), 0 where dropped.
std::vector<int> mask_of(const Tensor& y, float p) {
  const std::vector<float> v = y.to_vector<float>();
  std::vector<int> mask(v.size());
  size_t bad = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != 0.0f && v[i] != 1.0f / (1.0f - p)) ++bad;
    mask[i] = v[i] != 0.0f;
  }
  CHECK_MESSAGE(bad == 0, bad << " outputs are neither 0 nor 1 / (1 - p)");
  return mask;
}

}  // namespace

TEST_CASE("dropout: keep fraction of 100k elements is 1 - p") {
  for (const float p : {0.1f, 0.3f, 0.5f, 0.9f}) {
    CAPTURE(p);
    Rng rng(1234);
    const std::vector<int> mask = mask_of(dropout(Tensor::ones({100, 1000}), p, true, rng), p);
    double kept = 0;
    for (int m : mask) kept += m;
    CHECK(std::abs(kept / mask.size() - (1.0 - p)) < 0.01);
  }
}

TEST_CASE("dropout: element i is decided by Philox word i of the reserved blocks") {
  const float p = 0.4f;
  Rng rng(42);
  rng.next_u32();  // position 1: the reservation starts at the next whole block, 1
  const int64_t n = 1001;
  const Tensor x = Tensor::uniform({n}, 0.5f, 2.0f, rng);  // moves the stream on to word 1 + n
  const uint64_t first_block = (rng.state().position + 3) / 4;
  const Tensor y = dropout(x, p, true, rng);
  CHECK(rng.state().position == (first_block + (n + 3) / 4) * 4);

  const std::vector<float> xv = x.to_vector<float>(), yv = y.to_vector<float>();
  for (int64_t i = 0; i < n; ++i) {
    uint32_t words[4];
    philox4x32(first_block + static_cast<uint64_t>(i / 4), 42, words);
    const bool keep = uniform_from_bits(words[i % 4]) >= p;
    const float expected = keep ? xv[i] * (1.0f / (1.0f - p)) : 0.0f;
    if (yv[i] != expected) {
      FAIL_CHECK("element " << i << ": got " << yv[i] << ", expected " << expected);
      break;
    }
  }
}

TEST_CASE("dropout: same seed gives the same mask, the stream moves on") {
  const Tensor x = Tensor::ones({3, 257});
  Rng a(7), b(7), c(8);
  const std::vector<int> first = mask_of(dropout(x, 0.5f, true, a), 0.5f);
  CHECK(first == mask_of(dropout(x, 0.5f, true, b), 0.5f));
  CHECK(first != mask_of(dropout(x, 0.5f, true, c), 0.5f));
  CHECK(first != mask_of(dropout(x, 0.5f, true, a), 0.5f));  // a's next draw
  CHECK_FALSE(a.state() == b.state());
}

TEST_CASE("dropout: identity when not training or p = 0") {
  Rng rng(3);
  const Tensor x = Tensor::normal({4, 5}, 0.0f, 1.0f, rng);
  const Rng::State before = rng.state();
  CHECK(dropout(x, 0.5f, false, rng).impl() == x.impl());
  CHECK(dropout(x, 0.0f, true, rng).impl() == x.impl());
  CHECK(rng.state() == before);
}

TEST_CASE("dropout: backward uses the forward mask") {
  Rng rng(5);
  const float p = 0.25f;
  const Tensor x = Tensor::ones({8, 16}).requires_grad_();
  const Tensor y = dropout(x, p, true, rng);
  const std::vector<float> yv = y.to_vector<float>();
  y.backward(Tensor::full({8, 16}, 3.0f));
  std::vector<float> expected(yv.size());
  for (size_t i = 0; i < yv.size(); ++i) expected[i] = yv[i] != 0.0f ? 3.0f / (1.0f - p) : 0.0f;
  check_close(x.grad(), expected, 1e-6);
}

TEST_CASE("dropout gradcheck") {
  Rng init(6);
  const Tensor x = Tensor::normal({6, 7}, 0.0f, 1.0f, init).requires_grad_();
  gradcheck([](const std::vector<Tensor>& in) {
    Rng rng(123);  // the same mask on every evaluation
    return dropout(in[0], 0.3f, true, rng);
  }, {x});
  const Tensor v = Tensor::normal({5, 4}, 0.0f, 1.0f, init).requires_grad_();
  gradcheck([](const std::vector<Tensor>& in) {
    Rng rng(9);
    return dropout(in[0].transpose(0, 1), 0.5f, true, rng);  // non-contiguous input
  }, {v});
}

TEST_CASE("dropout: mask does not depend on the thread count") {
  const Tensor x = Tensor::ones({300, 1000});
  const int saved = num_threads();
  set_num_threads(1);
  Rng a(31);
  const std::vector<int> one = mask_of(dropout(x, 0.2f, true, a), 0.2f);
  set_num_threads(3);
  Rng b(31);
  const std::vector<int> three = mask_of(dropout(x, 0.2f, true, b), 0.2f);
  set_num_threads(saved);
  CHECK(one == three);
}

TEST_CASE("dropout parity: CPU vs accelerator") {
  polyak::testing::for_each_accelerator([](Device device) {
    Rng init(10);
    const Tensor x = Tensor::normal({37, 129}, 0.0f, 1.0f, init);
    const Tensor dy = Tensor::normal({37, 129}, 0.0f, 1.0f, init);
    const float p = 0.35f;
    Rng rc(77), rd(77);
    rc.next_u32();
    rd.next_u32();
    const Tensor xc = x.clone().requires_grad_(), xd = x.clone().to(device).requires_grad_();
    const Tensor yc = dropout(xc, p, true, rc), yd = dropout(xd, p, true, rd);
    CHECK(rc.state() == rd.state());
    check_close(yd.to(Device::CPU), yc, 1e-6, 1e-6);
    yc.backward(dy);
    yd.backward(dy.to(device));
    check_close(xd.grad().to(Device::CPU), xc.grad(), 1e-6, 1e-6);
  });
}

TEST_CASE("dropout: p outside [0, 1) is rejected") {
  Rng rng(1);
  const Tensor x = Tensor::ones({4});
  CHECK_THROWS_AS(dropout(x, 1.0f, true, rng), std::invalid_argument);
  CHECK_THROWS_AS(dropout(x, 1.5f, true, rng), std::invalid_argument);
  CHECK_THROWS_AS(dropout(x, -0.1f, true, rng), std::invalid_argument);
  CHECK_THROWS_AS(dropout(x, std::numeric_limits<float>::quiet_NaN(), true, rng), std::invalid_argument);
  CHECK_THROWS_AS(dropout(x, 1.0f, false, rng), std::invalid_argument);
}

TEST_CASE("dropout on the accelerator: the CPU's mask for odd sizes and block offsets, and gradcheck") {
  polyak::testing::for_each_accelerator([](Device device) {
    Rng init(11);
    for (const int64_t n : {int64_t{1}, int64_t{3}, int64_t{4}, int64_t{5}, int64_t{1001}, int64_t{1} << 18}) {
      CAPTURE(n);
      const Tensor x = Tensor::normal({n}, 0.0f, 1.0f, init);
      Rng rc(5), rd(5);
      for (int i = 0; i < 7; ++i) {  // start mid-block
        rc.next_u32();
        rd.next_u32();
      }
      const Tensor yc = dropout(x, 0.4f, true, rc), yd = dropout(x.to(device), 0.4f, true, rd);
      CHECK(rc.state() == rd.state());
      check_close(yd.to(Device::CPU), yc, 0, 0);
    }
    const Tensor x = Tensor::normal({6, 7}, 0.0f, 1.0f, init).to(device).requires_grad_();
    gradcheck([](const std::vector<Tensor>& in) {
      Rng rng(123);
      return dropout(in[0], 0.3f, true, rng);
    }, {x});
  });
}
