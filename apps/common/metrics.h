// Metrics on a model's predictions (raw logits + labels): what the EMA paper reports.
//
// Notation: z_i in R^C are the logits of image i, p_i = softmax(z_i), y_i its label,
// yhat_i = argmax_c p_ic its prediction and c_i = max_c p_ic its confidence.
//
// - top-1 accuracy and NLL = mean_i -log p_i[y_i] are top1_accuracy() and mean_nll()
//   in evaluate.h; nll() here adds a temperature.
// - Expected calibration error: split the images into bins B_1..B_M by confidence;
//   ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|, acc the fraction correct in the bin,
//   conf the mean confidence. Two binnings:
//     equal mass  (the paper's, M = 100): sort by confidence and cut into M bins of
//                 (nearly) equal count, see equal_mass_bins();
//     equal width (the common one, M = 15): bin k holds confidences in (k/M, (k+1)/M].
// - Temperature scaling (Guo et al. 2017): the T > 0 minimising the validation NLL of
//   softmax(z / T). With b = 1/T, NLL(b) = mean_i [logsumexp(b z_i) - b z_i[y_i]] is
//   convex in b: NLL'(b) = mean_i (E_p[z] - z_y), NLL''(b) = mean_i Var_p(z) >= 0.
//   fit_temperature() runs a golden-section search on log T over [1e-2, 1e2] (unimodal,
//   since log T is a monotone reparametrisation of a convex function of b), then a few
//   Newton steps on b to polish the result.
// - Churn between two models over the same images: % of images whose argmax differs.
// - Jensen-Shannon divergence: mean_i JS(p_i, q_i), JS(p, q) = KL(p||m)/2 + KL(q||m)/2
//   with m = (p + q)/2, natural log, so 0 <= JS <= ln 2. Computed from log-probabilities
//   (log m = logaddexp(log p, log q) - ln 2), so zero or underflowing probabilities are
//   handled exactly (0 log 0 = 0).
// - Memorisation of noisy labels: among training images whose given (noisy) label
//   differs from the clean one, the % predicted as the noisy label (memorised) and the
//   % predicted as the clean label (corrected).
//
// Units: accuracy, ECE, churn and the memorisation rates are percentages (0..100), as
// top1_accuracy() is; bin confidences and accuracies are fractions (0..1); NLL and JS
// are in nats. All arithmetic is in double.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "apps/common/evaluate.h"

namespace polyak::app {

// ---- probabilities ----

// softmax(logits / temperature) of every image: count x classes, row-major.
std::vector<double> softmax_probabilities(const Predictions& p, double temperature = 1.0);
// argmax of every row of the logits (the first on ties).
std::vector<int64_t> predicted_labels(const Predictions& p);
// Mean negative log-likelihood of softmax(logits / temperature), natural log.
double nll(const Predictions& p, double temperature = 1.0);

// ---- calibration ----

enum class Binning { EqualMass, EqualWidth };
std::string binning_name(Binning binning);  // "equal_mass", "equal_width"

struct CalibrationBin {
  double lower = 0, upper = 0;  // confidence interval of the bin: (lower, upper] for equal width,
                                // [min, max] of its members' confidences for equal mass
  int64_t count = 0;
  double confidence = 0;  // mean confidence of the members (0 when empty)
  double accuracy = 0;    // fraction of the members predicted correctly (0 when empty)
};

// The data of a reliability diagram: every bin (empty ones included, with count 0) and
// the ECE they give.
struct Reliability {
  Binning binning = Binning::EqualWidth;
  std::vector<CalibrationBin> bins;
  double ece = 0;     // percent
  int64_t total = 0;  // number of images
};

// Sizes of the M equal-mass bins of n sorted items, as numpy.array_split does: every
// bin gets floor(n/M) items and the first n mod M bins one more, so sizes differ by at
// most one and the larger bins hold the lower confidences. With n < M the last M - n
// bins are empty. Example: n = 10, M = 4 -> 3, 3, 2, 2.
std::vector<int64_t> equal_mass_bin_sizes(int64_t n, int64_t bins);

// Equal-width bin of a confidence in (0, 1]: k with k/M < c <= (k+1)/M, compared in
// double against the boundaries k/M; c <= 0 goes to bin 0 and c > 1 to bin M-1.
int64_t equal_width_bin(double confidence, int64_t bins);

// The core: reliability data from per-image confidences and correctness. Equal-mass
// sorting is stable (ties keep the input order).
Reliability reliability(const std::vector<double>& confidences, const std::vector<bool>& correct, Binning binning,
                        int64_t bins);
// From predictions: confidence = max softmax(logits / temperature).
Reliability reliability(const Predictions& p, Binning binning, int64_t bins, double temperature = 1.0);

// ECE in percent with the paper's binning (100 equal-mass bins) or the common one
// (15 equal-width bins).
double ece_equal_mass(const Predictions& p, int64_t bins = 100, double temperature = 1.0);
double ece_equal_width(const Predictions& p, int64_t bins = 15, double temperature = 1.0);

// ---- temperature scaling ----

struct TemperatureFit {
  double temperature = 1;
  double nll_before = 0;  // at T = 1
  double nll_after = 0;   // at the fitted T
};

// The T in [1e-2, 1e2] minimising nll(validation, T). An empty set gives T = 1.
TemperatureFit fit_temperature(const Predictions& validation);
// The same predictions with logits / temperature (accuracy is unchanged).
Predictions apply_temperature(const Predictions& p, double temperature);

// ---- agreement between two models on the same images ----

// Percent of images whose argmax differs. Throws std::invalid_argument when the two
// sets differ in count or classes.
double churn(const Predictions& a, const Predictions& b);
// Mean Jensen-Shannon divergence (nats) between softmax(a) and softmax(b), per image.
double js_divergence(const Predictions& a, const Predictions& b);

// ---- label noise ----

struct Memorisation {
  int64_t noisy = 0;       // images whose noisy label differs from the clean one
  int64_t memorised = 0;   // ... predicted as their noisy label
  int64_t corrected = 0;   // ... predicted as their clean label
  double memorised_percent() const;  // of `noisy`; 0 when there are none
  double corrected_percent() const;
};

// `p` are the predictions on the training images, `noisy_labels` the labels trained on
// and `clean_labels` the true ones (both of p.count() entries; p.labels is not used).
Memorisation memorisation(const Predictions& p, const std::vector<int64_t>& noisy_labels,
                          const std::vector<int64_t>& clean_labels);

}  // namespace polyak::app
