#include "apps/phema/reconstruct.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <numeric>
#include <regex>
#include <stdexcept>

#include "apps/common/checkpoint.h"
#include "apps/common/cli.h"
#include "ema/power_profile.h"
#include "engine/linalg.h"

namespace polyak::app {

namespace fs = std::filesystem;

std::vector<Snapshot> list_snapshots(const std::string& run_dir) {
  const fs::path folder = fs::path(run_dir) / "phema";
  if (!is_folder(folder.string()))
    throw std::invalid_argument(run_dir + ": no phema/ folder (train with --phema 0.05,0.10 to take snapshots)");
  static const std::regex name(R"(phema([0-9.eE+-]+)-([0-9]+)\.safetensors)");
  std::vector<Snapshot> snapshots;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(folder, error)) {
    const std::string file = entry.path().filename().string();
    if (file.find(".tmp.") != std::string::npos) continue;  // an interrupted atomic write
    std::smatch m;
    if (!std::regex_match(file, m, name))
      throw std::invalid_argument(entry.path().string() + ": not a snapshot name (phema<sigma_rel>-<step>.safetensors)");
    // The train app names an average by its float sigma_rel: read it back as that float.
    snapshots.push_back({entry.path().string(), static_cast<double>(std::stof(m[1].str())), std::stoll(m[2].str())});
  }
  if (error) throw std::invalid_argument(folder.string() + ": " + error.message());
  if (snapshots.empty()) throw std::invalid_argument(folder.string() + ": no snapshots");
  // The initial weights are the one average every run has for free: an exponential
  // average starts from them and keeps a share of them (sigma_rel 0 marks it).
  const fs::path init = fs::path(run_dir) / "init.safetensors";
  if (fs::exists(init, error)) snapshots.push_back({init.string(), 0.0, 0});
  std::sort(snapshots.begin(), snapshots.end(), [](const Snapshot& a, const Snapshot& b) {
    return a.sigma_rel != b.sigma_rel ? a.sigma_rel < b.sigma_rel : a.step < b.step;
  });
  return snapshots;
}

namespace {

// The number `text` holds in full, or bad_flag(flag, whole, expected).
double parse_number(const std::string& text, const char* flag, const std::string& whole, const char* expected) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v)) bad_flag(flag, whole, expected);
  return v;
}

}  // namespace

Target parse_power_target(const std::string& text) {
  const char* expected = "a sigma_rel in (0, 1/sqrt(12) = 0.2887)";
  Target t;
  t.power = true;
  t.sigma_rel = parse_number(text, "--sigma-rel", text, expected);
  if (!(t.sigma_rel > 0 && t.sigma_rel < 1 / std::sqrt(12.0))) bad_flag("--sigma-rel", text, expected);
  t.name = "phema" + text;
  return t;
}

Target parse_exponential_target(const std::string& text, bool warmup) {
  const char* expected = "decay@period: a decay in (0, 1) and a period >= 1 in steps, as 0.998@1";
  const std::string body = text.rfind("ema", 0) == 0 ? text.substr(3) : text;
  Target t;
  t.power = false;
  t.warmup = warmup;
  const size_t at = body.find('@');
  t.decay = parse_number(body.substr(0, at), "--ema", text, expected);
  const double every = at == std::string::npos ? 1.0 : parse_number(body.substr(at + 1), "--ema", text, expected);
  if (!(t.decay > 0 && t.decay < 1) || !(every >= 1 && every <= 1e9) || every != std::floor(every))
    bad_flag("--ema", text, expected);
  t.every = static_cast<int64_t>(every);
  t.name = "ema" + body.substr(0, at) + "@" + std::to_string(t.every);
  return t;
}

std::vector<double> target_profile(const Target& target, int64_t step) {
  if (target.power) return ema::power_profile(ema::power_gamma(target.sigma_rel), step);
  std::vector<double> profile = ema::exponential_profile(target.decay, target.every, target.warmup, step);
  if (target.every == 1) return profile;
  // Updated every T steps, the average takes the weights of one step in T; the power
  // averages take every step's. Step by step the two profiles cannot match (half of an
  // every-other-step profile's energy sits where the other is zero), yet the weights of
  // neighbouring steps differ by one small SGD step. So the weight each update gives
  // stands for the T steps up to it, spread evenly over them: the same total, the same
  // shape at the scale of a period.
  std::vector<double> spread(profile.size(), 0.0);
  spread[0] = profile[0];  // the initial weights stay themselves
  for (int64_t u = target.every; u < static_cast<int64_t>(profile.size()); u += target.every)
    for (int64_t s = u - target.every + 1; s <= u; ++s)
      spread[static_cast<size_t>(s)] = profile[static_cast<size_t>(u)] / static_cast<double>(target.every);
  return spread;
}

std::vector<double> solve_symmetric(const std::vector<double>& gram, const std::vector<double>& rhs,
                                    double* condition) {
  const int n = static_cast<int>(rhs.size());
  const linalg::SymmetricEigen eigen = linalg::symmetric_eigen(gram, n);
  const std::vector<double>& values = eigen.values;
  const std::vector<double>& vectors = eigen.vectors;
  // Ascending eigenvalues; row j of `vectors` is eigenvector j.
  const double largest = values.back(), smallest = values.front();
  *condition = smallest > 0 ? largest / smallest : std::numeric_limits<double>::infinity();
  std::vector<double> x(static_cast<size_t>(n), 0.0);
  for (int j = 0; j < n; ++j) {
    if (!(values[static_cast<size_t>(j)] > 1e-12 * largest)) continue;
    const double* v = vectors.data() + static_cast<size_t>(j) * static_cast<size_t>(n);
    double along = 0;
    for (int i = 0; i < n; ++i) along += v[i] * rhs[static_cast<size_t>(i)];
    along /= values[static_cast<size_t>(j)];
    for (int i = 0; i < n; ++i) x[static_cast<size_t>(i)] += along * v[i];
  }
  return x;
}

std::vector<double> solve_average_weights(const std::vector<double>& gram, const std::vector<double>& rhs,
                                          double* condition) {
  const size_t n = rhs.size();
  if (n == 1) {
    *condition = 1;
    return {1.0};
  }
  // x = e_last + Z y with Z's columns e_i - e_last (i < last) spans every x of sum 1;
  // the least squares in y has the Gram matrix Z^T G Z and right-hand side Z^T (b - G e_last).
  const size_t m = n - 1, last = n - 1;
  const auto g = [&](size_t i, size_t j) { return gram[i * n + j]; };
  std::vector<double> reduced(m * m), reduced_rhs(m);
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < m; ++j) reduced[i * m + j] = g(i, j) - g(i, last) - g(last, j) + g(last, last);
    reduced_rhs[i] = rhs[i] - g(i, last) - rhs[last] + g(last, last);
  }
  const std::vector<double> y = solve_symmetric(reduced, reduced_rhs, condition);
  std::vector<double> x(y);
  x.push_back(1.0 - std::accumulate(y.begin(), y.end(), 0.0));
  return x;
}

Fit fit_target(const std::vector<Snapshot>& snapshots, const Target& target, int64_t step) {
  std::vector<size_t> used;  // the snapshots taken by `step`
  std::vector<std::vector<double>> profiles;
  for (size_t i = 0; i < snapshots.size(); ++i)
    if (snapshots[i].step <= step) {
      used.push_back(i);
      profiles.push_back(snapshots[i].step == 0 ? std::vector<double>{1.0}  // the initial weights
                                                : ema::power_profile(ema::power_gamma(snapshots[i].sigma_rel),
                                                                     snapshots[i].step));
    }
  if (used.empty()) throw std::invalid_argument("no snapshot was taken by step " + std::to_string(step));
  const std::vector<double> q = target_profile(target, step);
  const ema::ProfileFit equations = ema::normal_equations(profiles, q);
  Fit fit;
  const std::vector<double> x = solve_average_weights(equations.gram, equations.rhs, &fit.condition);
  fit.relative_residual = ema::relative_residual(profiles, q, x);
  fit.weights.assign(snapshots.size(), 0.0);
  for (size_t k = 0; k < used.size(); ++k) fit.weights[used[k]] = x[k];
  return fit;
}

void combine_snapshots(nn::Module& model, const std::vector<Snapshot>& snapshots, const std::vector<double>& weights,
                       const std::string& architecture) {
  // The sum in double on the host: the weights of an ill-conditioned fit can be large
  // and of both signs, and float sums would lose what cancels.
  const Tensor& params = model.parameter_arena();
  const Tensor& buffers = model.buffer_arena();
  std::vector<double> param_sum(static_cast<size_t>(params.numel()), 0.0);
  std::vector<double> buffer_sum(static_cast<size_t>(buffers.numel()), 0.0);
  const auto accumulate = [](std::vector<double>& sum, const Tensor& arena, double w) {
    if (arena.numel() == 0) return;
    const std::vector<float> values = arena.to_vector<float>();
    for (size_t i = 0; i < values.size(); ++i) sum[i] += w * static_cast<double>(values[i]);
  };
  for (size_t i = 0; i < snapshots.size(); ++i) {
    if (weights.at(i) == 0.0) continue;
    load_model(snapshots[i].path, model, architecture);
    accumulate(param_sum, params, weights[i]);
    accumulate(buffer_sum, buffers, weights[i]);
  }
  const auto store = [](const std::vector<double>& sum, const Tensor& arena) {
    if (arena.numel() == 0) return;
    std::vector<float> values(sum.begin(), sum.end());
    Tensor(arena).copy_(Tensor::from_vector(values, arena.shape()));
  };
  store(param_sum, params);
  store(buffer_sum, buffers);
}

}  // namespace polyak::app
