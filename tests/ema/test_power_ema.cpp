// Power-function averages (post-hoc EMA): gamma from sigma_rel, and the averages the
// EmaSet tracks against the exact profiles that reconstruction relies on.
#include <doctest/doctest.h>

#include <cmath>
#include <numeric>
#include <tuple>
#include <algorithm>

#include "ema/ema.h"
#include "ema/power_profile.h"
#include "engine/nn/layers.h"
#include "engine/rng.h"
#include "support/impulse_weights.h"

using namespace polyak;

namespace {
double sigma_rel_of(double gamma) { return std::sqrt((gamma + 1) / ((gamma + 2) * (gamma + 2) * (gamma + 3))); }
}  // namespace

TEST_CASE("power ema: gamma from sigma_rel (EDM2's values) and the range") {
  // EDM2 quotes 16.97, 6.94 and 4.60; the digits are the cubic's root.
  CHECK(ema::power_gamma(0.05) == doctest::Approx(16.9721986).epsilon(1e-7));
  CHECK(ema::power_gamma(0.10) == doctest::Approx(6.9372039).epsilon(1e-7));
  CHECK(ema::power_gamma(0.13) == doctest::Approx(4.6035968).epsilon(1e-7));
  for (double sigma : {0.01, 0.05, 0.2, 0.28})  // the root has the asked-for width
    CHECK(sigma_rel_of(ema::power_gamma(sigma)) == doctest::Approx(sigma).epsilon(1e-9));
  CHECK_THROWS_AS(ema::power_gamma(1.0 / std::sqrt(12.0)), std::invalid_argument);
  CHECK_THROWS_AS(ema::power_gamma(0.0), std::invalid_argument);
  CHECK(ema::power_beta(6.0, 1) == 0.0);
  CHECK(ema::power_beta(6.0, 4) == doctest::Approx(std::pow(0.75, 7.0)));
}

TEST_CASE("power ema: profiles are averages, and a power profile has its sigma_rel") {
  const int64_t t = 4000;
  for (double sigma : {0.05, 0.10}) {
    const std::vector<double> p = ema::power_profile(ema::power_gamma(sigma), t);
    CHECK(std::accumulate(p.begin(), p.end(), 0.0) == doctest::Approx(1.0).epsilon(1e-12));
    double mean = 0, second = 0;
    for (size_t s = 0; s < p.size(); ++s) mean += p[s] * static_cast<double>(s);
    for (size_t s = 0; s < p.size(); ++s) second += p[s] * std::pow(static_cast<double>(s) - mean, 2);
    CHECK(std::sqrt(second) / static_cast<double>(t) == doctest::Approx(sigma).epsilon(0.01));
    CHECK(p[0] == 0.0);  // beta_1 = 0: the initial weights are replaced at the first step
  }
  const std::vector<double> e = ema::exponential_profile(0.99, 4, true, 1001);
  CHECK(std::accumulate(e.begin(), e.end(), 0.0) == doctest::Approx(1.0).epsilon(1e-12));
  CHECK(e[1001] == 0.0);  // not an update step
  CHECK(e[1000] > e[996]);
  CHECK(e[0] > 0.0);  // the initial weights keep a share
}

TEST_CASE("power ema: the tracked averages are their profiles (impulse weights)") {
  // One weight per step: at step s the live weights are one-hot(s), so every average
  // holds, element by element, the weight its profile gives each step.
  const int64_t steps = 59;
  polyak::testing::ImpulseWeights impulses(steps);
  ema::EmaSet set(impulses.model(), {.decays = {0.9f}, .every = 2, .warmup = true, .buffers = ema::BufferPolicy::Average, .power_sigma_rels = {0.10f, 0.13f}});
  CHECK(set.name(1) == "phema0.1");
  CHECK(set.is_power(2));
  for (int64_t s = 1; s <= steps; ++s) {
    impulses.at_step(s);
    CHECK(set.after_step(s) == (s % 2 == 0));
  }
  const std::vector<std::vector<double>> profiles = {
      ema::exponential_profile(0.9, 2, true, steps), ema::power_profile(ema::power_gamma(0.10f), steps),
      ema::power_profile(ema::power_gamma(0.13f), steps)};
  for (size_t k = 0; k < profiles.size(); ++k) {
    const std::vector<float> got = set.parameters(k).to_vector<float>();
    for (int64_t s = 0; s <= steps; ++s) CHECK(got[static_cast<size_t>(s)] == doctest::Approx(profiles[k][static_cast<size_t>(s)]).epsilon(1e-5).scale(1e-6));
  }
}

TEST_CASE("power ema: the exact discrete inner products approach EDM2's closed form") {
  // EDM2 (App. C, phema.py: p_dot_p) treats a power profile as the density
  // (gamma + 1) s^gamma / t^(gamma + 1) on [0, t] and integrates products in closed
  // form. polyak sums the exact discrete profiles of the updates it runs instead; over
  // thousands of steps the two agree.
  const auto closed_form = [](double t_a, double g_a, double t_b, double g_b) {
    const double ratio = t_a / t_b, exponent = t_a < t_b ? g_b : -g_a;
    return (g_a + 1) * (g_b + 1) * std::pow(ratio, exponent) / ((g_a + g_b + 1) * std::max(t_a, t_b));
  };
  const double g05 = ema::power_gamma(0.05), g10 = ema::power_gamma(0.10);
  for (const auto& [t_a, g_a, t_b, g_b] : {std::tuple{20000, g05, 20000, g10}, std::tuple{15000, g10, 20000, g05},
                                          std::tuple{20000, g05, 12000, g05}}) {
    const double discrete =
        ema::profile_dot(ema::power_profile(g_a, t_a), ema::power_profile(g_b, t_b));
    CHECK(discrete == doctest::Approx(closed_form(t_a, g_a, t_b, g_b)).epsilon(2e-3));
  }
}
