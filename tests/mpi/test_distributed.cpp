// The data-parallel pieces, run on every rank of an MPI job (ctest runs this binary
// alone and under mpiexec with 2 and 4 ranks): the rank-order sum, the gathered shards,
// sharded averages against unsharded ones, and the shared-out BN recompute against one
// process's. Every check is bit for bit. Each rank runs every test case in the same
// order, so the collective calls inside them meet.
#include <doctest/doctest.h>

#include <cstring>

#include "ema/bn_recompute.h"
#include "ema/ema.h"
#include "engine/distributed.h"
#include "engine/rng.h"
#include "models/registry.h"

using namespace polyak;

namespace {

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to(Device::CPU).contiguous(), y = b.to(Device::CPU).contiguous();
  return x.shape() == y.shape() && std::memcmp(x.raw_data(), y.raw_data(), static_cast<size_t>(x.numel()) * 4) == 0;
}

// Rank r's contribution to element i: magnitudes far apart, so that the order of the
// additions shows in the result.
float contribution(int r, int64_t i) {
  const float scales[] = {1e8f, 1.0f, -1e8f, 3.5f, 1e-3f};
  return scales[(r + i) % 5] * (1.0f + 0.001f * static_cast<float>(i % 17)) + static_cast<float>(r);
}

std::shared_ptr<nn::Module> resnet20(uint64_t seed) {
  Rng rng(seed);
  auto model = models::create_model("resnet20", 10, rng);
  model->pack_arenas();
  return model;
}

Tensor random_images(uint64_t seed, int64_t n) {
  Rng rng(seed);
  return Tensor::normal({n, 3, 32, 32}, 0.0f, 1.0f, rng);
}

}  // namespace

TEST_CASE("distributed: sum_in_rank_order adds the ranks' values in rank order, the same bits on every rank") {
  dist::Communicator& world = dist::world();
  for (const int64_t n : {int64_t{1}, int64_t{3}, int64_t{1000}, int64_t{4099}}) {
    CAPTURE(n);
    std::vector<float> mine(static_cast<size_t>(n)), expected(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      mine[static_cast<size_t>(i)] = contribution(world.rank(), i);
      float sum = contribution(0, i);
      for (int r = 1; r < world.size(); ++r) sum += contribution(r, i);
      expected[static_cast<size_t>(i)] = sum;
    }
    world.sum_in_rank_order(mine.data(), n);
    CHECK(std::memcmp(mine.data(), expected.data(), static_cast<size_t>(n) * sizeof(float)) == 0);
  }
}

TEST_CASE("distributed: aligned shares tile the vector, and gather_shards puts them together") {
  dist::Communicator& world = dist::world();
  for (const int64_t n : {int64_t{5}, int64_t{64}, int64_t{1000}, int64_t{270000}}) {
    CAPTURE(n);
    int64_t next = 0;
    for (int r = 0; r < world.size(); ++r) {
      const dist::Range s = dist::aligned_share(n, r, world.size(), 64);
      CHECK(s.begin == next);
      CHECK((s.begin % 64 == 0 || s.begin == n));
      next = s.end;
    }
    CHECK(next == n);
    std::vector<float> whole(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) whole[static_cast<size_t>(i)] = static_cast<float>(i) * 0.5f;
    const dist::Range s = dist::aligned_share(n, world.rank(), world.size(), 64);
    const Tensor all = Tensor::from_vector(whole, {n});
    CHECK(same_bits(dist::gather_shards(world, all.slice(s.begin, s.end).clone(), n, 64), all));
  }
}

TEST_CASE("distributed: sharded averages equal unsharded ones, through updates, Use and a checkpoint round trip") {
  dist::Communicator& world = dist::world();
  const auto model = resnet20(1);
  const ema::EmaOptions options{.decays = {0.9f, 0.99f}, .every = 2, .warmup = true, .power_sigma_rels = {0.1f}};
  ema::EmaSet sharded(*model, options, &world), whole(*model, options);
  CHECK(sharded.shard().size() <= model->parameter_arena().numel());
  Rng rng(7);
  for (int64_t t = 1; t <= 9; ++t) {
    Tensor live = model->parameter_arena();
    live.add_(Tensor::normal(live.shape(), 0.0f, 1.0f, rng), 0.01f);  // the same "training" on every rank
    Tensor buffers = model->buffer_arena();
    buffers.add_(Tensor::normal(buffers.shape(), 0.0f, 1.0f, rng), 0.01f);
    CHECK(sharded.after_step(t) == whole.after_step(t));
  }
  const auto a = sharded.state_tensors(), b = whole.state_tensors();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].first);
    CHECK(a[i].first == b[i].first);
    CHECK(same_bits(a[i].second, b[i].second));
  }
  const Tensor live_before = model->parameter_arena().clone();
  for (size_t k = 0; k < whole.size(); ++k) {
    ema::EmaSet::Use use(sharded, k);
    CHECK(same_bits(model->parameter_arena(), whole.parameters(k)));
  }
  CHECK(same_bits(model->parameter_arena(), live_before));
  ema::EmaSet restored(*model, options, &world);
  restored.load_state(b, whole.state_metadata());
  const auto c = restored.state_tensors();
  for (size_t i = 0; i < c.size(); ++i) CHECK(same_bits(c[i].second, b[i].second));
}

TEST_CASE("distributed: BN recompute over the ranks' shares of the batches equals one process over all of them") {
  dist::Communicator& world = dist::world();
  constexpr int64_t kBatches = 7;  // does not split evenly over 2 or 4 ranks
  const auto source_of = [](int64_t begin, int64_t end) {
    return [b = begin, end]() mutable -> std::optional<Tensor> {
      if (b >= end) return std::nullopt;
      return random_images(100 + static_cast<uint64_t>(b++), 8);
    };
  };
  const auto one = resnet20(2), shared = resnet20(2);
  CHECK(ema::recompute_bn(*one, source_of(0, kBatches)) == kBatches);
  const dist::Range mine = dist::share(kBatches, world.rank(), world.size());
  CHECK(ema::recompute_bn(*shared, source_of(mine.begin, mine.end), 0, &world) == kBatches);
  CHECK(same_bits(one->buffer_arena(), shared->buffer_arena()));
  const auto a = one->named_buffers(), b = shared->named_buffers();
  for (size_t i = 0; i < a.size(); ++i) CHECK(same_bits(a[i].second, b[i].second));  // the counters too
}
