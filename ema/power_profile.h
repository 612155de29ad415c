// Power-function averages and averaging profiles: the arithmetic of post-hoc EMA.
//
// Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion Models"
// (EDM2, 2024), Sec. 3 and App. C. A power-function EMA at step t weighs the weights of
// step s in proportion to s^gamma on [0, t]: its window grows with the run, and its
// relative standard deviation (the window's width over its reach) is a constant,
//   sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))),
// so gamma is the real root of gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma +
// (12 - sigma_rel^-2) = 0 (0.05 -> 16.97, 0.10 -> 6.94, 0.13 -> 4.60). It is tracked
// with one lerp per step, counting optimiser steps t from 1:
//   e_t = beta_t e_{t-1} + (1 - beta_t) w_t,   beta_t = (1 - 1/t)^(gamma + 1),
// (beta_1 = 0: the first step's weights replace the initial ones).
//
// A profile is the weight each step's weights carry in an average, a vector over steps
// 0..t (0 = the initial weights). Any average that is a fixed linear combination of the
// weights along the run has one, and an average of averages has the combination of
// their profiles. So an average never tracked can be rebuilt from snapshots of tracked
// ones: find x minimising |sum_i x_i p_i - q|^2 for the target profile q (the normal
// equations G x = b, G_ij = <p_i, p_j>, b_i = <p_i, q>), then the weighted sum of the
// snapshots. The profiles here are the exact discrete ones of the lerps polyak runs,
// so the residual is what the reconstruction misses, not an approximation of it.
#pragma once

#include <cstdint>
#include <vector>

namespace polyak::ema {

// gamma for a relative standard deviation in (0, 1/sqrt(12)); std::invalid_argument
// outside (at 1/sqrt(12) gamma is 0, the uniform average of the whole run).
double power_gamma(double sigma_rel);
// beta_t = (1 - 1/t)^(gamma + 1) for t >= 1.
double power_beta(double gamma, int64_t t);

// The profile (steps 0..t) of the power-function EMA of exponent gamma after t steps.
std::vector<double> power_profile(double gamma, int64_t t);

// The profile (steps 0..t) of an exponential EMA of decay `decay` updated every `every`
// steps with the paper's warm-up (EmaSet's rule, ema/ema.h) after t steps, starting
// from the initial weights.
std::vector<double> exponential_profile(double decay, int64_t every, bool warmup, int64_t t);

// <a, b> over the steps both cover (a profile ends at its own last step).
double profile_dot(const std::vector<double>& a, const std::vector<double>& b);

// The normal equations of the fit of `target` by `profiles`.
struct ProfileFit {
  std::vector<double> gram;  // n x n, row-major
  std::vector<double> rhs;   // n
  double target_norm2 = 0;   // <q, q>
};
ProfileFit normal_equations(const std::vector<std::vector<double>>& profiles, const std::vector<double>& target);

// |sum_i x_i p_i - q|^2 / |q|^2: the share of the target's profile the combination misses.
double relative_residual(const std::vector<std::vector<double>>& profiles, const std::vector<double>& target,
                         const std::vector<double>& x);

}  // namespace polyak::ema
