// Tensor storage, views, copies and the seeded RNG.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>

#include "engine/backend.h"
#include "engine/cuda/settings.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::testing::check_close;

TEST_CASE("tensor: creation fills, shapes and 64-byte alignment") {
  const Tensor z = Tensor::zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.strides() == Shape{3, 1});
  CHECK(z.numel() == 6);
  CHECK(z.is_contiguous());
  CHECK(reinterpret_cast<uintptr_t>(z.data<float>()) % 64 == 0);
  check_close(z, std::vector<float>(6, 0.0f));
  check_close(Tensor::ones({4}), std::vector<float>(4, 1.0f));
  check_close(Tensor::full({2, 2}, 2.5f), std::vector<float>(4, 2.5f));
  const Tensor labels = Tensor::zeros({5}, DType::I64);
  CHECK(labels.to_vector<int64_t>() == std::vector<int64_t>(5, 0));
  const int64_t raw[3] = {4, -1, 7};
  CHECK(Tensor::from_data(raw, {3}).to_vector<int64_t>() == std::vector<int64_t>{4, -1, 7});
  CHECK_THROWS_AS(Tensor::from_vector({1, 2, 3}, {2, 2}), std::invalid_argument);
  CHECK_THROWS_AS(z.data<int64_t>(), std::invalid_argument);
  CHECK(Tensor::zeros({0, 3}).numel() == 0);
}

TEST_CASE("tensor: storage is shared by views and freed with the last one") {
  std::weak_ptr<Storage> weak;
  {
    Tensor a = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
    weak = a.storage();
    Tensor v = a.reshape({3, 2});
    CHECK(v.storage() == a.storage());
    a = Tensor();
    CHECK(!weak.expired());
  }
  CHECK(weak.expired());
}

TEST_CASE("tensor: views - reshape, slice, transpose, permute, contiguous") {
  const Tensor a = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
  check_close(a.reshape({3, -1}), std::vector<float>{0, 1, 2, 3, 4, 5});
  CHECK(a.reshape({3, -1}).shape() == Shape{3, 2});
  CHECK_THROWS_AS(a.reshape({4, 2}), std::invalid_argument);

  const Tensor rows = Tensor::from_vector({0, 1, 2, 3, 4, 5, 6, 7}, {4, 2}).slice(1, 3);
  CHECK(rows.shape() == Shape{2, 2});
  CHECK(rows.offset() == 2);
  check_close(rows, std::vector<float>{2, 3, 4, 5});
  CHECK_THROWS_AS(a.slice(1, 3), std::out_of_range);

  const Tensor t = a.transpose(0, 1);
  CHECK(t.shape() == Shape{3, 2});
  CHECK(!t.is_contiguous());
  CHECK(t.storage() == a.storage());
  check_close(t, std::vector<float>{0, 3, 1, 4, 2, 5});
  const Tensor tc = t.contiguous();
  CHECK(tc.is_contiguous());
  CHECK(tc.storage() != a.storage());

  const Tensor x = Tensor::from_vector({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23},
                                       {2, 3, 4});
  const Tensor p = x.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  // p[i][j][k] = x[j][k][i] = 12 j + 4 k + i
  const std::vector<float> pv = p.to_vector<float>();
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 2; ++j)
      for (int k = 0; k < 3; ++k) CHECK(pv[i * 6 + j * 3 + k] == doctest::Approx(12 * j + 4 * k + i));
  CHECK(p.reshape({4, 6}).to_vector<float>() == pv);  // reshape of a non-contiguous view copies
  CHECK(x.flatten().shape() == Shape{2, 12});
  CHECK_THROWS_AS(x.permute({0, 0, 1}), std::invalid_argument);
}

// Strided copies as the option-A shortcut makes them (x[:, :, ::2, ::2] into the
// channel interior of a padded tensor, and its gradient back), with rows long enough for
// the vectorised paths of steps 1 and 2 and their scalar tails, a step of 3, dims that
// merge (the interior of each image is one block) and all three element sizes; every
// element against its index formula.
TEST_CASE("tensor: strided copies of long rows, both ways, every element size") {
  constexpr int64_t N = 3, C = 4, H = 6, W = 37;
  const auto value = [](int64_t n, int64_t c, int64_t h, int64_t w) { return ((n * C + c) * H + h) * W + w; };
  const auto check_dtype = [&](auto zero) {
    using T = decltype(zero);
    std::vector<T> data(static_cast<size_t>(N * C * H * W));
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<T>(i % 251);
    const Tensor x = Tensor::from_data(data.data(), {N, C, H, W});
    for (const int64_t step : {1, 2, 3}) {
      INFO("dtype size " << sizeof(T) << ", step " << step);
      // Gather: every step-th column of every second row, into the middle channels.
      const Tensor sampled = x.slice(2, 0, H, 2).slice(3, 1, W, step);
      const int64_t Hs = sampled.size(2), Ws = sampled.size(3);
      Tensor padded = Tensor::zeros({N, C + 4, Hs, Ws}, dtype_of<T>());
      padded.slice(1, 2, C + 2, 1).copy_(sampled);
      const std::vector<T> got = padded.to_vector<T>();
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C + 4; ++c)
          for (int64_t h = 0; h < Hs; ++h)
            for (int64_t w = 0; w < Ws; ++w) {
              const bool inside = c >= 2 && c < C + 2;
              const T want = inside ? static_cast<T>(value(n, c - 2, 2 * h, 1 + w * step) % 251) : T{0};
              REQUIRE(got[static_cast<size_t>(((n * (C + 4) + c) * Hs + h) * Ws + w)] == want);
            }
      // Scatter: the interior back into those places of a zero tensor of x's shape.
      Tensor back = Tensor::zeros({N, C, H, W}, dtype_of<T>());
      back.slice(2, 0, H, 2).slice(3, 1, W, step).copy_(padded.slice(1, 2, C + 2, 1));
      const std::vector<T> scattered = back.to_vector<T>();
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t w = 0; w < W; ++w) {
              const bool sampled_here = h % 2 == 0 && w >= 1 && (w - 1) % step == 0;
              const T want = sampled_here ? static_cast<T>(value(n, c, h, w) % 251) : T{0};
              REQUIRE(scattered[static_cast<size_t>(value(n, c, h, w))] == want);
            }
    }
  };
  check_dtype(float{});
  check_dtype(uint8_t{});
  check_dtype(int64_t{});
}

TEST_CASE("tensor: in-place ops and copies") {
  Tensor a = Tensor::from_vector({1, 2, 3, 4}, {2, 2});
  const Tensor b = Tensor::from_vector({10, 20, 30, 40}, {2, 2});
  a.add_(b, 0.5f);
  check_close(a, std::vector<float>{6, 12, 18, 24});
  a.mul_(0.5f);
  check_close(a, std::vector<float>{3, 6, 9, 12});
  a.copy_(b.transpose(0, 1));
  check_close(a, std::vector<float>{10, 30, 20, 40});
  Tensor c = a.clone();
  c.zero_();
  check_close(a, std::vector<float>{10, 30, 20, 40});
  check_close(c, std::vector<float>{0, 0, 0, 0});
  CHECK(a.to(Device::CPU).storage() == a.storage());
  CHECK_THROWS_AS(a.copy_(Tensor::zeros({3})), std::invalid_argument);
  CHECK(Tensor::full({1}, 3.0f).item() == 3.0f);
}

TEST_CASE("rng: Philox matches the published known-answer vectors") {
  // Random123 kat_vectors: philox4x32_10 with counter 0 and key 0.
  uint32_t out[4];
  philox4x32(0, 0, out);
  CHECK(out[0] == 0x6627e8d5u);
  CHECK(out[1] == 0xe169c58du);
  CHECK(out[2] == 0xbc57ac4cu);
  CHECK(out[3] == 0x9b00dbd8u);
}

TEST_CASE("rng: seeded, reproducible, and its state saves and restores exactly") {
  Rng a(42), b(42), c(43);
  std::vector<uint32_t> sa, sb, sc;
  for (int i = 0; i < 10; ++i) {
    sa.push_back(a.next_u32());
    sb.push_back(b.next_u32());
    sc.push_back(c.next_u32());
  }
  CHECK(sa == sb);
  CHECK(sa != sc);
  const Rng::State saved = a.state();
  const float u = a.uniform(), n = a.normal();
  const uint64_t k = a.below(1000);
  a.set_state(saved);
  CHECK(a.uniform() == u);
  CHECK(a.normal() == n);
  CHECK(a.below(1000) == k);

  // Moments of the samplers over many draws.
  Rng r(5);
  double sum = 0, sq = 0, usum = 0;
  int outside_unit_interval = 0;
  const int draws = 200000;
  for (int i = 0; i < draws; ++i) {
    const double z = r.normal();
    sum += z;
    sq += z * z;
    const float v = r.uniform();
    outside_unit_interval += v < 0.0f || v >= 1.0f;
    usum += v;
  }
  CHECK(outside_unit_interval == 0);
  CHECK(sum / draws == doctest::Approx(0.0).epsilon(0.01).scale(1.0));
  CHECK(sq / draws == doctest::Approx(1.0).epsilon(0.01));
  CHECK(usum / draws == doctest::Approx(0.5).epsilon(0.01));

  const uint64_t first = r.reserve_blocks(10);
  CHECK(r.state().position == (first + 10) * 4);
}

TEST_CASE("tensor: uniform and normal creation are deterministic for a seed") {
  Rng a(9), b(9);
  CHECK(Tensor::normal({100}, 1.0f, 2.0f, a).to_vector<float>() == Tensor::normal({100}, 1.0f, 2.0f, b).to_vector<float>());
  const std::vector<float> u = Tensor::uniform({1000}, -2.0f, 3.0f, a).to_vector<float>();
  CHECK(std::all_of(u.begin(), u.end(), [](float v) { return v >= -2.0f && v < 3.0f; }));
}

TEST_CASE("tensor on the accelerator: copies of every dtype, views, large transfers, memory reuse") {
  polyak::testing::for_each_accelerator([](Device device) {
    // Round trips of every dtype, and strided copies of 1-, 4- and 8-byte elements.
    const std::vector<uint8_t> bytes = {1, 2, 3, 4, 5, 6};
    const std::vector<int32_t> ints = {-1, 2, -3, 4, -5, 6};
    const std::vector<int64_t> longs = {int64_t{1} << 40, -2, 3, -4, 5, int64_t{-1} << 50};
    const Tensor b = Tensor::from_data(bytes.data(), {2, 3}, device);
    const Tensor i = Tensor::from_data(ints.data(), {2, 3}, device);
    const Tensor l = Tensor::from_data(longs.data(), {2, 3}, device);
    CHECK(b.device() == device);
    CHECK(b.to_vector<uint8_t>() == bytes);
    CHECK(i.to_vector<int32_t>() == ints);
    CHECK(l.to_vector<int64_t>() == longs);
    CHECK(b.transpose(0, 1).contiguous().to_vector<uint8_t>() == std::vector<uint8_t>{1, 4, 2, 5, 3, 6});
    CHECK(i.transpose(0, 1).contiguous().to_vector<int32_t>() == std::vector<int32_t>{-1, 4, 2, -5, -3, 6});
    CHECK(l.transpose(0, 1).contiguous().to_vector<int64_t>() ==
          std::vector<int64_t>{longs[0], longs[3], longs[1], longs[4], longs[2], longs[5]});
    CHECK(Tensor::zeros({5}, DType::I64, device).to_vector<int64_t>() == std::vector<int64_t>(5, 0));

    // Views, slices of dim 0 and a copy back from a strided device view.
    const Tensor x = Tensor::from_vector({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 4});
    const Tensor dx = x.to(device);
    check_close(dx.slice(1, 3).to(Device::CPU), x.slice(1, 3).contiguous(), 0, 0);
    check_close(dx.permute({1, 0}).to(Device::CPU), x.permute({1, 0}).contiguous(), 0, 0);
    check_close(dx.reshape({2, 6}).to(Device::CPU), x.reshape({2, 6}), 0, 0);
    Tensor host = Tensor::zeros({4, 3});
    host.copy_(dx.transpose(0, 1));
    check_close(host, x.transpose(0, 1).contiguous(), 0, 0);
    CHECK(dx.to(device).storage() == dx.storage());

    // More than the pinned staging ring holds at once, in both directions.
    Rng rng(3);
    const Tensor big = Tensor::uniform({9 << 20}, -1.0f, 1.0f, rng);  // 36 MiB
    const Tensor dbig = big.to(device);
    CHECK(dbig.to_vector<float>() == big.to_vector<float>());
    CHECK(dbig.clone().to_vector<float>() == big.to_vector<float>());

    // A freed block is reused for the next tensor of its size: no new device allocation.
    (void)Tensor::empty({1000, 1000}, DType::F32, device);
    const size_t mallocs = cuda_memory_stats().device_mallocs;
    for (int k = 0; k < 10; ++k) (void)Tensor::empty({1000, 1000}, DType::F32, device);
    CHECK(cuda_memory_stats().device_mallocs == mallocs);
    CHECK(cuda_memory_stats().peak_in_use >= cuda_memory_stats().in_use);
  });
}
