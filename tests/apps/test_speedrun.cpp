// The airbench94 recipe (apps/speedrun): its schedule, Lookahead decay and parameter
// groups against the recipe's numbers, test-time augmentation against views built by
// hand, and the speedrun binary end to end on a few real images.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>

#include "apps/child_process.h"
#include "apps/common/tta.h"
#include "apps/speedrun/recipe.h"
#include "engine/autograd.h"
#include "engine/nn/layers.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "models/registry.h"
#include "support/gradcheck.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;
using namespace polyak;
using polyak::app::AirbenchRecipe;
using polyak::testing::check_close;
using polyak::testing::ChildResult;
using polyak::testing::read_file;
using polyak::testing::run_child;

TEST_CASE("airbench recipe: 476 steps, the triangle schedule and the Lookahead decay") {
  const AirbenchRecipe recipe;
  const int64_t total = app::total_steps(recipe, 50000);
  CHECK(total == 476);  // 48 batches of 1024 (the last partial batch dropped) x 9.9 epochs, rounded up
  // int(0.23 * 476) = 109: from 0.2 up to 1 there, down to 0.07 at the end.
  CHECK(app::triangle_factor(recipe, 0, total) == doctest::Approx(0.2));
  CHECK(app::triangle_factor(recipe, 109, total) == doctest::Approx(1.0));
  CHECK(app::triangle_factor(recipe, 476, total) == doctest::Approx(0.07));
  CHECK(app::triangle_factor(recipe, 50, total) == doctest::Approx(0.2 + 0.8 * 50 / 109.0));
  CHECK(app::triangle_factor(recipe, 300, total) == doctest::Approx(1.0 - 0.93 * (300 - 109) / 367.0));
  CHECK(app::lookahead_decay(recipe, 476, total) == doctest::Approx(std::pow(0.95, 5)));
  CHECK(app::lookahead_decay(recipe, 238, total) == doctest::Approx(std::pow(0.95, 5) / 8));
}

TEST_CASE("airbench recipe: SGD settings and groups (frozen whitening and BN weights, BN biases 64x)") {
  const AirbenchRecipe recipe;
  const SgdOptions sgd = app::airbench_sgd_options(recipe);
  const double kilostep = 1024 * (1 + 1 / 0.15);
  CHECK(sgd.lr == doctest::Approx(11.5 / kilostep));
  CHECK(sgd.momentum == doctest::Approx(0.85));
  CHECK(sgd.nesterov);
  CHECK(sgd.lr * sgd.weight_decay == doctest::Approx(0.0153 * 1024 / kilostep));  // the decay per step

  Rng rng(1);
  auto model = models::create_model("airbench94", 10, rng);
  model->pack_arenas();
  std::map<std::string, std::pair<int64_t, int64_t>> at;  // name -> its run of the arena
  int64_t offset = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    at[name] = {offset, offset + p.numel()};
    offset += p.numel();
  }
  const auto group_of = [&](const std::vector<SgdGroup>& groups, const std::string& name) -> const SgdGroup* {
    for (const SgdGroup& g : groups)
      if (g.begin == at.at(name).first && g.end == at.at(name).second) return &g;
    return nullptr;  // the default group
  };
  for (const bool whitening_bias : {true, false}) {
    CAPTURE(whitening_bias);
    const std::vector<SgdGroup> groups = app::airbench_sgd_groups(recipe, *model, whitening_bias);
    CHECK(group_of(groups, "0.weight")->lr_scale == 0);
    CHECK(group_of(groups, "2.norm1.weight")->lr_scale == 0);
    CHECK(group_of(groups, "4.norm2.weight")->lr_scale == 0);
    const SgdGroup* bias = group_of(groups, "3.norm1.bias");
    REQUIRE(bias != nullptr);
    CHECK(bias->lr_scale == 64);
    CHECK(sgd.lr * bias->lr_scale * bias->weight_decay == doctest::Approx(sgd.lr * sgd.weight_decay));  // same decay
    CHECK(group_of(groups, "2.conv1.weight") == nullptr);
    CHECK(group_of(groups, "7.weight") == nullptr);
    if (whitening_bias)
      CHECK(group_of(groups, "0.bias") == nullptr);
    else
      CHECK(group_of(groups, "0.bias")->lr_scale == 0);
    CHECK(groups.size() == (whitening_bias ? 13u : 14u));  // 0.weight, 6 BN weights, 6 BN biases (+ 0.bias)
  }
}

namespace {

// A 1x1x3x4 image 0..11 (row-major) and its views, built by hand.
Tensor small_image() {
  std::vector<float> v(12);
  for (int i = 0; i < 12; ++i) v[i] = static_cast<float>(i);
  return Tensor::from_vector(v, {1, 1, 3, 4});
}

}  // namespace

TEST_CASE("TTA views: mirror, and shifts by one pixel with reflected edges") {
  CHECK(app::mirrored(small_image()).to_vector<float>() == std::vector<float>{3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8});
  // Shifted by (-1, -1): out[y][x] = in[reflect(y - 1)][reflect(x - 1)], row -1 = row 1, column -1 = column 1.
  CHECK(app::shifted_reflect(small_image(), -1, -1).to_vector<float>() ==
        std::vector<float>{5, 4, 5, 6, 1, 0, 1, 2, 5, 4, 5, 6});
  // Shifted by (+1, +1): row 3 = row 1, column 4 = column 2.
  CHECK(app::shifted_reflect(small_image(), 1, 1).to_vector<float>() ==
        std::vector<float>{5, 6, 7, 6, 9, 10, 11, 10, 5, 6, 7, 6});
  CHECK_THROWS_AS(app::shifted_reflect(small_image(), 3, 0), std::invalid_argument);
}

TEST_CASE("TTA logits: level 2 weighs the six views 1/4, 1/4 and 1/8 x 4") {
  Rng rng(3);
  nn::Linear layer(12, 5, rng);
  struct Net : nn::Module {
    explicit Net(nn::Linear& l) : linear(l) {}
    Tensor forward(const Tensor& x) override { return exp(linear(x.flatten(1))); }  // not linear in x
    nn::Linear& linear;
  } net(layer);
  NoGradGuard no_grad;
  const Tensor x = small_image();
  const auto f = [&](const std::vector<float>& image) { return net(Tensor::from_vector(image, {1, 1, 3, 4})).to_vector<float>(); };
  const std::vector<std::vector<float>> views = {
      {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8},
      {5, 4, 5, 6, 1, 0, 1, 2, 5, 4, 5, 6},   {6, 5, 4, 5, 2, 1, 0, 1, 6, 5, 4, 5},
      {5, 6, 7, 6, 9, 10, 11, 10, 5, 6, 7, 6}, {6, 7, 6, 5, 10, 11, 10, 9, 6, 7, 6, 5}};
  const std::vector<double> weights = {0.25, 0.25, 0.125, 0.125, 0.125, 0.125};
  std::vector<float> expected(5, 0.0f), mirror(5, 0.0f);
  for (size_t v = 0; v < views.size(); ++v) {
    const std::vector<float> logits = f(views[v]);
    for (size_t k = 0; k < 5; ++k) {
      expected[k] += static_cast<float>(weights[v]) * logits[k];
      if (v < 2) mirror[k] += 0.5f * logits[k];
    }
  }
  check_close(app::tta_logits(net, x, 0), f(views[0]), 1e-6, 1e-6);
  check_close(app::tta_logits(net, x, 1), mirror, 1e-6, 1e-6);
  check_close(app::tta_logits(net, x, 2), expected, 1e-6, 1e-6);
  CHECK_THROWS_AS(app::tta_logits(net, x, 3), std::invalid_argument);
}

TEST_CASE("speedrun app: a short run on real images writes its runs and summary; Lookahead off changes the run after its first copy-back; bad flags exit 2") {
  const std::string data = polyak::testing::real_data_path("cifar10");
  if (data.empty()) return;
  polyak::testing::TempDir tmp("polyak_speedrun");
  // 128 images in batches of 32: 4 steps per epoch, 5 epochs, so the whitening bias's
  // freeze happens, and Lookahead (from the fourth epoch, every 5 steps) starts at step 15
  // and copies its average back at the fourth epoch's end, so the fifth differs from a
  // run without it; TTA level 2 on 100 test images.
  const std::vector<std::string> flags = {"--seed",         "7",   "--batch-size",  "32", "--epochs",  "5",
                                          "--train-subset", "128", "--test-subset", "100", "--threads", "2",
                                          "--data",         data};
  const auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), flags.begin(), flags.end());
    return extra;
  };
  const ChildResult r = run_child(POLYAK_SPEEDRUN_BIN, with({"--runs", "2", "--output", tmp.path.string()}));
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const auto summary = nlohmann::json::parse(read_file(tmp.path / "summary.json"));
  REQUIRE(summary["runs"].size() == 2);
  CHECK(summary["runs"][0]["seed"] == 7);
  CHECK(summary["runs"][1]["seed"] == 8);
  for (const auto& run : summary["runs"]) {
    CHECK(run["accuracy"].get<double>() >= 0.0);
    CHECK(run["accuracy"].get<double>() <= 100.0);
    CHECK(run["accuracy_without_tta"].get<double>() >= 0.0);
    CHECK(run["epochs"].size() == 5);
    CHECK(run["epochs"][4]["steps"] == 4);
    CHECK(run["seconds"].get<double>() > 0.0);
    CHECK(std::isfinite(run["epochs"][3]["last_batch_loss"].get<double>()));
  }
  CHECK(nlohmann::json::parse(read_file(tmp.path / "run8.json")) == summary["runs"][1]);
  const auto last_loss = [](const nlohmann::json& run) { return run["epochs"][4]["last_batch_loss"].get<double>(); };
  CHECK(last_loss(summary["runs"][0]) != last_loss(summary["runs"][1]));  // other seeds, other runs

  const ChildResult plain =
      run_child(POLYAK_SPEEDRUN_BIN, with({"--runs", "1", "--lookahead", "off", "--output", (tmp.path / "plain").string()}));
  REQUIRE_MESSAGE(plain.exit_code == 0, plain.output);
  const auto ablation = nlohmann::json::parse(read_file(tmp.path / "plain" / "run7.json"));
  CHECK(ablation["lookahead"] == false);
  CHECK(summary["runs"][0]["lookahead"] == true);
  CHECK(ablation["epochs"][3]["last_batch_loss"] == summary["runs"][0]["epochs"][3]["last_batch_loss"]);
  CHECK(last_loss(ablation) != last_loss(summary["runs"][0]));

  const ChildResult bad = run_child(POLYAK_SPEEDRUN_BIN, {"--tta", "3", "--data", data, "--output", tmp.path.string()});
  CHECK(bad.exit_code == 2);
  CHECK(bad.output.find("--tta 3") != std::string::npos);
  const ChildResult small = run_child(POLYAK_SPEEDRUN_BIN, {"--train-subset", "100", "--data", data, "--output", tmp.path.string()});
  CHECK(small.exit_code == 2);
  CHECK(small.output.find("--train-subset 100") != std::string::npos);
  const ChildResult unsure =
      run_child(POLYAK_SPEEDRUN_BIN, {"--lookahead", "maybe", "--data", data, "--output", tmp.path.string()});
  CHECK(unsure.exit_code == 2);
  CHECK(unsure.output.find("maybe") != std::string::npos);
}
