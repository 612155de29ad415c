#include "apps/common/metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace polyak::app {

namespace {

const float* row_of(const Predictions& p, int64_t i) { return p.logits.data() + i * p.classes; }

void check_shape(const Predictions& p, const char* what) {
  if (p.classes <= 0 && p.count() > 0) throw std::invalid_argument(std::string(what) + ": predictions without classes");
  if (static_cast<int64_t>(p.logits.size()) != p.count() * p.classes)
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(p.logits.size()) + " logits for " +
                                std::to_string(p.count()) + " images of " + std::to_string(p.classes) + " classes");
}

void check_same_images(const Predictions& a, const Predictions& b, const char* what) {
  check_shape(a, what);
  check_shape(b, what);
  if (a.count() != b.count() || a.classes != b.classes)
    throw std::invalid_argument(std::string(what) + ": the two prediction sets differ (" + std::to_string(a.count()) +
                                " x " + std::to_string(a.classes) + " vs " + std::to_string(b.count()) + " x " +
                                std::to_string(b.classes) + ")");
}

// log softmax(row * scale) into `out` (classes entries).
void log_softmax(const float* row, int64_t classes, double scale, double* out) {
  double top = -INFINITY;
  for (int64_t c = 0; c < classes; ++c) top = std::max(top, scale * row[c]);
  double sum = 0;
  for (int64_t c = 0; c < classes; ++c) sum += std::exp(scale * row[c] - top);
  const double lse = top + std::log(sum);
  for (int64_t c = 0; c < classes; ++c) out[c] = scale * row[c] - lse;
}

int64_t argmax(const float* row, int64_t classes) { return std::max_element(row, row + classes) - row; }

// log(exp(a) + exp(b)), exact when either is -inf.
double log_add_exp(double a, double b) {
  const double top = std::max(a, b);
  if (top == -INFINITY) return -INFINITY;
  return top + std::log1p(std::exp(std::min(a, b) - top));
}

// NLL of softmax(b z) and its first two derivatives in b = 1/T.
struct NllAt {
  double value = 0, d1 = 0, d2 = 0;
};

NllAt nll_and_derivatives(const Predictions& p, double b) {
  NllAt out;
  std::vector<double> logq(static_cast<size_t>(p.classes));
  for (int64_t i = 0; i < p.count(); ++i) {
    const float* z = row_of(p, i);
    log_softmax(z, p.classes, b, logq.data());
    double mean = 0, second = 0;
    for (int64_t c = 0; c < p.classes; ++c) {
      const double q = std::exp(logq[static_cast<size_t>(c)]);
      mean += q * z[c];
      second += q * static_cast<double>(z[c]) * z[c];
    }
    const int64_t y = p.labels[static_cast<size_t>(i)];
    out.value -= logq[static_cast<size_t>(y)];
    out.d1 += mean - z[y];
    out.d2 += std::max(0.0, second - mean * mean);
  }
  const double n = static_cast<double>(p.count());
  out.value /= n;
  out.d1 /= n;
  out.d2 /= n;
  return out;
}

}  // namespace

// ---------------------------------------------------------------- probabilities

std::vector<double> softmax_probabilities(const Predictions& p, double temperature) {
  check_shape(p, "softmax_probabilities");
  std::vector<double> out(p.logits.size());
  for (int64_t i = 0; i < p.count(); ++i) {
    double* o = out.data() + i * p.classes;
    log_softmax(row_of(p, i), p.classes, 1.0 / temperature, o);
    for (int64_t c = 0; c < p.classes; ++c) o[c] = std::exp(o[c]);
  }
  return out;
}

std::vector<int64_t> predicted_labels(const Predictions& p) {
  check_shape(p, "predicted_labels");
  std::vector<int64_t> out(static_cast<size_t>(p.count()));
  for (int64_t i = 0; i < p.count(); ++i) out[static_cast<size_t>(i)] = argmax(row_of(p, i), p.classes);
  return out;
}

double nll(const Predictions& p, double temperature) {
  check_shape(p, "nll");
  if (p.count() == 0) return 0.0;
  std::vector<double> logq(static_cast<size_t>(p.classes));
  double total = 0;
  for (int64_t i = 0; i < p.count(); ++i) {
    log_softmax(row_of(p, i), p.classes, 1.0 / temperature, logq.data());
    total -= logq[static_cast<size_t>(p.labels[static_cast<size_t>(i)])];
  }
  return total / static_cast<double>(p.count());
}

// ---------------------------------------------------------------- calibration

std::string binning_name(Binning binning) { return binning == Binning::EqualMass ? "equal_mass" : "equal_width"; }

std::vector<int64_t> equal_mass_bin_sizes(int64_t n, int64_t bins) {
  if (bins <= 0) throw std::invalid_argument("equal-mass binning: the number of bins must be positive");
  std::vector<int64_t> sizes(static_cast<size_t>(bins), n / bins);
  for (int64_t b = 0; b < n % bins; ++b) ++sizes[static_cast<size_t>(b)];
  return sizes;
}

int64_t equal_width_bin(double confidence, int64_t bins) {
  if (bins <= 0) throw std::invalid_argument("equal-width binning: the number of bins must be positive");
  const double m = static_cast<double>(bins);
  if (!(confidence > 0)) return 0;
  if (confidence >= 1) return bins - 1;
  int64_t k = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(confidence * m)) - 1, 0, bins - 1);
  // ceil(c*M) can be off by one where c*M rounds across an integer: settle it against
  // the boundaries themselves, k/M < c <= (k+1)/M.
  while (k > 0 && confidence <= static_cast<double>(k) / m) --k;
  while (k < bins - 1 && confidence > static_cast<double>(k + 1) / m) ++k;
  return k;
}

Reliability reliability(const std::vector<double>& confidences, const std::vector<bool>& correct, Binning binning,
                        int64_t bins) {
  if (confidences.size() != correct.size())
    throw std::invalid_argument("reliability: " + std::to_string(confidences.size()) + " confidences but " +
                                std::to_string(correct.size()) + " correctness flags");
  if (bins <= 0) throw std::invalid_argument("reliability: the number of bins must be positive");
  const int64_t n = static_cast<int64_t>(confidences.size());
  Reliability r;
  r.binning = binning;
  r.total = n;
  r.bins.resize(static_cast<size_t>(bins));
  std::vector<double> correct_sum(static_cast<size_t>(bins), 0.0), confidence_sum(static_cast<size_t>(bins), 0.0);
  auto add = [&](int64_t b, size_t i) {
    CalibrationBin& bin = r.bins[static_cast<size_t>(b)];
    if (bin.count == 0) bin.lower = bin.upper = confidences[i];
    bin.lower = std::min(bin.lower, confidences[i]);
    bin.upper = std::max(bin.upper, confidences[i]);
    ++bin.count;
    confidence_sum[static_cast<size_t>(b)] += confidences[i];
    correct_sum[static_cast<size_t>(b)] += correct[i] ? 1.0 : 0.0;
  };
  if (binning == Binning::EqualMass) {
    std::vector<size_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return confidences[a] < confidences[b]; });
    const std::vector<int64_t> sizes = equal_mass_bin_sizes(n, bins);
    size_t next = 0;
    for (int64_t b = 0; b < bins; ++b)
      for (int64_t j = 0; j < sizes[static_cast<size_t>(b)]; ++j) add(b, order[next++]);
  } else {
    for (size_t i = 0; i < confidences.size(); ++i) add(equal_width_bin(confidences[i], bins), i);
    for (int64_t b = 0; b < bins; ++b) {
      r.bins[static_cast<size_t>(b)].lower = static_cast<double>(b) / static_cast<double>(bins);
      r.bins[static_cast<size_t>(b)].upper = static_cast<double>(b + 1) / static_cast<double>(bins);
    }
  }
  double ece = 0;
  for (size_t b = 0; b < r.bins.size(); ++b) {
    CalibrationBin& bin = r.bins[b];
    if (bin.count == 0) continue;
    const double count = static_cast<double>(bin.count);
    bin.confidence = confidence_sum[b] / count;
    bin.accuracy = correct_sum[b] / count;
    ece += count * std::abs(bin.accuracy - bin.confidence);
  }
  r.ece = n ? 100.0 * ece / static_cast<double>(n) : 0.0;
  return r;
}

Reliability reliability(const Predictions& p, Binning binning, int64_t bins, double temperature) {
  const std::vector<double> probs = softmax_probabilities(p, temperature);
  std::vector<double> confidences(static_cast<size_t>(p.count()));
  std::vector<bool> correct(static_cast<size_t>(p.count()));
  for (int64_t i = 0; i < p.count(); ++i) {
    const double* row = probs.data() + i * p.classes;
    const int64_t top = std::max_element(row, row + p.classes) - row;
    confidences[static_cast<size_t>(i)] = row[top];
    correct[static_cast<size_t>(i)] = argmax(row_of(p, i), p.classes) == p.labels[static_cast<size_t>(i)];
  }
  return reliability(confidences, correct, binning, bins);
}

double ece_equal_mass(const Predictions& p, int64_t bins, double temperature) {
  return reliability(p, Binning::EqualMass, bins, temperature).ece;
}

double ece_equal_width(const Predictions& p, int64_t bins, double temperature) {
  return reliability(p, Binning::EqualWidth, bins, temperature).ece;
}

// ---------------------------------------------------------------- temperature scaling

TemperatureFit fit_temperature(const Predictions& validation) {
  check_shape(validation, "fit_temperature");
  TemperatureFit fit;
  if (validation.count() == 0) return fit;
  fit.nll_before = nll(validation, 1.0);
  const double lo_log_t = std::log(1e-2), hi_log_t = std::log(1e2);
  auto f = [&](double log_t) { return nll(validation, std::exp(log_t)); };

  // Golden-section search on log T: keeps a bracket [a, b] with interior points
  // c < d, dropping the side whose interior point is worse.
  const double inv_phi = (std::sqrt(5.0) - 1) / 2;
  double a = lo_log_t, b = hi_log_t;
  double c = b - inv_phi * (b - a), d = a + inv_phi * (b - a);
  double fc = f(c), fd = f(d);
  while (b - a > 1e-4) {
    if (fc <= fd) {
      b = d, d = c, fd = fc;
      c = b - inv_phi * (b - a), fc = f(c);
    } else {
      a = c, c = d, fc = fd;
      d = a + inv_phi * (b - a), fd = f(d);
    }
  }
  double log_t = (a + b) / 2, best = f(log_t);

  // Newton on b = 1/T, where the NLL is convex; a step is kept only if it lowers the
  // NLL and stays inside the search interval.
  for (int step = 0; step < 5; ++step) {
    const double beta = std::exp(-log_t);
    const NllAt at = nll_and_derivatives(validation, beta);
    if (!(at.d2 > 0)) break;
    const double next_beta = beta - at.d1 / at.d2;
    if (!(next_beta > 0)) break;
    const double next_log_t = std::clamp(-std::log(next_beta), lo_log_t, hi_log_t);
    const double value = f(next_log_t);
    if (!(value < best)) break;
    log_t = next_log_t, best = value;
  }
  fit.temperature = std::exp(log_t);
  fit.nll_after = best;
  return fit;
}

Predictions apply_temperature(const Predictions& p, double temperature) {
  if (!(temperature > 0)) throw std::invalid_argument("apply_temperature: the temperature must be positive");
  Predictions out = p;
  for (float& z : out.logits) z = static_cast<float>(static_cast<double>(z) / temperature);
  return out;
}

// ---------------------------------------------------------------- agreement

double churn(const Predictions& a, const Predictions& b) {
  check_same_images(a, b, "churn");
  if (a.count() == 0) return 0.0;
  int64_t differ = 0;
  for (int64_t i = 0; i < a.count(); ++i) differ += argmax(row_of(a, i), a.classes) != argmax(row_of(b, i), b.classes);
  return 100.0 * static_cast<double>(differ) / static_cast<double>(a.count());
}

double js_divergence(const Predictions& a, const Predictions& b) {
  check_same_images(a, b, "js_divergence");
  if (a.count() == 0) return 0.0;
  const size_t classes = static_cast<size_t>(a.classes);
  std::vector<double> lp(classes), lq(classes);
  double total = 0;
  for (int64_t i = 0; i < a.count(); ++i) {
    log_softmax(row_of(a, i), a.classes, 1.0, lp.data());
    log_softmax(row_of(b, i), b.classes, 1.0, lq.data());
    double js = 0;
    for (size_t c = 0; c < classes; ++c) {
      const double lm = log_add_exp(lp[c], lq[c]) - std::log(2.0);
      // p log(p/m), with 0 log 0 = 0 (exp(-inf) = 0 and the product is skipped).
      if (lp[c] > -INFINITY) js += 0.5 * std::exp(lp[c]) * (lp[c] - lm);
      if (lq[c] > -INFINITY) js += 0.5 * std::exp(lq[c]) * (lq[c] - lm);
    }
    total += std::clamp(js, 0.0, std::log(2.0));
  }
  return total / static_cast<double>(a.count());
}

// ---------------------------------------------------------------- label noise

double Memorisation::memorised_percent() const {
  return noisy ? 100.0 * static_cast<double>(memorised) / static_cast<double>(noisy) : 0.0;
}

double Memorisation::corrected_percent() const {
  return noisy ? 100.0 * static_cast<double>(corrected) / static_cast<double>(noisy) : 0.0;
}

Memorisation memorisation(const Predictions& p, const std::vector<int64_t>& noisy_labels,
                          const std::vector<int64_t>& clean_labels) {
  check_shape(p, "memorisation");
  if (static_cast<int64_t>(noisy_labels.size()) != p.count() || static_cast<int64_t>(clean_labels.size()) != p.count())
    throw std::invalid_argument("memorisation: " + std::to_string(p.count()) + " predictions but " +
                                std::to_string(noisy_labels.size()) + " noisy and " + std::to_string(clean_labels.size()) +
                                " clean labels");
  Memorisation m;
  for (int64_t i = 0; i < p.count(); ++i) {
    const size_t k = static_cast<size_t>(i);
    if (noisy_labels[k] == clean_labels[k]) continue;
    ++m.noisy;
    const int64_t predicted = argmax(row_of(p, i), p.classes);
    m.memorised += predicted == noisy_labels[k];
    m.corrected += predicted == clean_labels[k];
  }
  return m;
}

}  // namespace polyak::app
