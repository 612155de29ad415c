#include "ema/power_profile.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "ema/ema.h"

namespace polyak::ema {

double power_gamma(double sigma_rel) {
  const double uniform = 1.0 / std::sqrt(12.0);
  if (!(sigma_rel > 0.0 && sigma_rel < uniform))
    throw std::invalid_argument("sigma_rel " + std::to_string(sigma_rel) + ": expected a number in (0, " +
                                std::to_string(uniform) + ") (1/sqrt(12) is the uniform average of the whole run)");
  const double s = 1.0 / (sigma_rel * sigma_rel);
  const auto f = [s](double g) { return ((g + 7.0) * g + (16.0 - s)) * g + (12.0 - s); };
  // f(0) = 12 - s < 0 and f grows without bound: bisect the one positive root.
  double lo = 0.0, hi = 1.0;
  while (f(hi) < 0.0) hi *= 2.0;
  for (int i = 0; i < 200 && hi - lo > 1e-15 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (f(mid) < 0.0 ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

double power_beta(double gamma, int64_t t) {
  if (t < 1) throw std::invalid_argument("power_beta: steps are counted from 1");
  return std::pow(1.0 - 1.0 / static_cast<double>(t), gamma + 1.0);
}

namespace {

// The profile of e_0 = w_0, e_s = kept(s) e_{s-1} + (1 - kept(s)) w_s at the update
// steps s <= t: w_s carries (1 - kept(s)) times the product of the later kept(r), and
// w_0 the product of them all. One pass from the end.
template <class Kept>
std::vector<double> lerp_profile(int64_t t, int64_t every, Kept kept) {
  std::vector<double> profile(static_cast<size_t>(t + 1), 0.0);
  double later = 1.0;
  for (int64_t s = t - t % every; s >= every; s -= every) {
    const double k = kept(s);
    profile[static_cast<size_t>(s)] = (1.0 - k) * later;
    later *= k;
  }
  profile[0] = later;
  return profile;
}

}  // namespace

std::vector<double> power_profile(double gamma, int64_t t) {
  return lerp_profile(t, 1, [gamma](int64_t s) { return power_beta(gamma, s); });
}

std::vector<double> exponential_profile(double decay, int64_t every, bool warmup, int64_t t) {
  return lerp_profile(t, every, [&](int64_t s) {
    return static_cast<double>(warmed_up_decay(static_cast<float>(decay), every, warmup, s));
  });
}

double profile_dot(const std::vector<double>& a, const std::vector<double>& b) {
  double sum = 0.0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) sum += a[i] * b[i];
  return sum;
}

ProfileFit normal_equations(const std::vector<std::vector<double>>& profiles, const std::vector<double>& target) {
  const size_t n = profiles.size();
  ProfileFit fit;
  fit.gram.assign(n * n, 0.0);
  fit.rhs.assign(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j <= i; ++j) fit.gram[i * n + j] = fit.gram[j * n + i] = profile_dot(profiles[i], profiles[j]);
    fit.rhs[i] = profile_dot(profiles[i], target);
  }
  fit.target_norm2 = profile_dot(target, target);
  return fit;
}

double relative_residual(const std::vector<std::vector<double>>& profiles, const std::vector<double>& target,
                         const std::vector<double>& x) {
  size_t length = target.size();
  for (const auto& p : profiles) length = std::max(length, p.size());
  std::vector<double> miss(length, 0.0);
  for (size_t i = 0; i < target.size(); ++i) miss[i] = -target[i];
  for (size_t k = 0; k < profiles.size(); ++k)
    for (size_t i = 0; i < profiles[k].size(); ++i) miss[i] += x.at(k) * profiles[k][i];
  return profile_dot(miss, miss) / profile_dot(target, target);
}

}  // namespace polyak::ema
