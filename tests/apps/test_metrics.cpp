// Metrics on predictions: ECE in both binnings on hand-computed examples, reliability
// data, temperature scaling recovering a known temperature, churn, JS divergence and
// memorisation of noisy labels.
#include <doctest/doctest.h>

#include <cmath>
#include <stdexcept>

#include "apps/common/metrics.h"
#include "engine/rng.h"

using namespace polyak;
using namespace polyak::app;

namespace {

// Two-class predictions whose softmax is exactly (up to rounding) the given
// probabilities of class 0: logits (log p, log(1 - p)).
Predictions two_class(const std::vector<double>& p0, const std::vector<int64_t>& labels) {
  Predictions p;
  p.classes = 2;
  p.labels = labels;
  for (double q : p0) {
    p.logits.push_back(static_cast<float>(std::log(q)));
    p.logits.push_back(static_cast<float>(std::log(1 - q)));
  }
  return p;
}

Predictions from_logits(int64_t classes, const std::vector<float>& logits, const std::vector<int64_t>& labels) {
  Predictions p;
  p.classes = classes;
  p.logits = logits;
  p.labels = labels;
  return p;
}

}  // namespace

TEST_CASE("metrics: softmax, predicted labels and NLL with a temperature") {
  const Predictions p = from_logits(3, {1, 2, 3, 0, 0, 0}, {2, 1});
  const std::vector<double> probs = softmax_probabilities(p);
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  CHECK(probs[0] == doctest::Approx(std::exp(1.0) / z));
  CHECK(probs[2] == doctest::Approx(std::exp(3.0) / z));
  CHECK(probs[4] == doctest::Approx(1.0 / 3));
  CHECK(predicted_labels(p) == std::vector<int64_t>{2, 0});  // the first on ties
  CHECK(nll(p) == doctest::Approx(mean_nll(p)));
  // nll at T equals the NLL of the logits divided by T.
  CHECK(nll(p, 2.5) == doctest::Approx(mean_nll(apply_temperature(p, 2.5))).epsilon(1e-6));
  // (-log(e^1.5/(e^.5+e^1+e^1.5)) + log 3) / 2
  const double expected = (std::log(std::exp(0.5) + std::exp(1.0) + std::exp(1.5)) - 1.5 + std::log(3.0)) / 2;
  CHECK(nll(p, 2.0) == doctest::Approx(expected));
}

TEST_CASE("metrics: equal-width bins are (k/M, (k+1)/M], boundaries included exactly") {
  CHECK(equal_width_bin(0.2, 5) == 0);
  CHECK(equal_width_bin(0.2000001, 5) == 1);
  CHECK(equal_width_bin(1.0, 5) == 4);
  CHECK(equal_width_bin(0.01, 15) == 0);
  CHECK(equal_width_bin(0.0, 15) == 0);
  for (int k = 1; k <= 15; ++k) {
    const double boundary = static_cast<double>(k) / 15;
    CHECK(equal_width_bin(boundary, 15) == k - 1);                        // right end is in
    if (k < 15) CHECK(equal_width_bin(std::nextafter(boundary, 2.0), 15) == k);  // just past is out
  }
}

TEST_CASE("metrics: equal-mass bin sizes distribute the remainder to the first bins, like numpy.array_split") {
  CHECK(equal_mass_bin_sizes(10, 4) == std::vector<int64_t>{3, 3, 2, 2});
  CHECK(equal_mass_bin_sizes(8, 4) == std::vector<int64_t>{2, 2, 2, 2});
  CHECK(equal_mass_bin_sizes(3, 5) == std::vector<int64_t>{1, 1, 1, 0, 0});
  CHECK(equal_mass_bin_sizes(0, 2) == std::vector<int64_t>{0, 0});
  CHECK_THROWS_AS(equal_mass_bin_sizes(3, 0), std::invalid_argument);
}

TEST_CASE("metrics: ECE with equal-width bins on a hand-made example") {
  // M = 5, bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1].
  //   bin 1: .30 right, .35 wrong         conf .325, acc 1/2, gap .175, weight 2/6
  //   bin 2: .55 right                     conf .55,  acc 1,   gap .45,  weight 1/6
  //   bin 4: .90 right, .95 right, .85 wrong  conf .90, acc 2/3, gap 7/30, weight 3/6
  // ECE = (2 * .175 + .45 + 3 * 7/30) / 6 = (.35 + .45 + .7) / 6 = .25 -> 25%.
  const std::vector<double> conf = {0.3, 0.35, 0.55, 0.9, 0.95, 0.85};
  const std::vector<bool> correct = {true, false, true, true, true, false};
  const Reliability r = reliability(conf, correct, Binning::EqualWidth, 5);
  CHECK(r.ece == doctest::Approx(25.0));
  CHECK(r.total == 6);
  REQUIRE(r.bins.size() == 5);
  CHECK(r.bins[0].count == 0);
  CHECK(r.bins[1].count == 2);
  CHECK(r.bins[1].confidence == doctest::Approx(0.325));
  CHECK(r.bins[1].accuracy == doctest::Approx(0.5));
  CHECK(r.bins[1].lower == doctest::Approx(0.2));
  CHECK(r.bins[1].upper == doctest::Approx(0.4));
  CHECK(r.bins[2].count == 1);
  CHECK(r.bins[2].accuracy == doctest::Approx(1.0));
  CHECK(r.bins[3].count == 0);
  CHECK(r.bins[4].count == 3);
  CHECK(r.bins[4].confidence == doctest::Approx(0.9));
  CHECK(r.bins[4].accuracy == doctest::Approx(2.0 / 3));

  // The same kind of example from logits, with the default 15 bins:
  //   p = (.9,.1) label 0: right, conf .9  -> bin 13 (13/15 = .867 < .9 <= .933)
  //   p = (.9,.1) label 1: wrong, conf .9  -> bin 13
  //   p = (.3,.7) label 1: right, conf .7  -> bin 10 (.667 < .7 <= .733)
  //   p = (.62,.38) label 0: right, conf .62 -> bin 9 (.6 < .62 <= .667)
  // ECE = 2/4 * |.5 - .9| + 1/4 * |1 - .7| + 1/4 * |1 - .62| = .2 + .075 + .095 = .37 -> 37%.
  const Predictions p = two_class({0.9, 0.9, 0.3, 0.62}, {0, 1, 1, 0});
  CHECK(ece_equal_width(p) == doctest::Approx(37.0).epsilon(1e-5));
  const Reliability r15 = reliability(p, Binning::EqualWidth, 15);
  CHECK(r15.bins[13].count == 2);
  CHECK(r15.bins[13].accuracy == doctest::Approx(0.5));
  CHECK(r15.bins[10].count == 1);
  CHECK(r15.bins[9].count == 1);
  CHECK(r15.bins[9].confidence == doctest::Approx(0.62).epsilon(1e-6));
}

TEST_CASE("metrics: ECE with equal-mass bins on a hand-made example") {
  // M = 2 over 5 images: sorted confidences .55 wrong, .60 right, .70 right | .80 right, .95 wrong
  // (sizes 3, 2: the first bin takes the remainder).
  //   bin 0: conf (.55+.6+.7)/3 = .61667, acc 2/3, gap .05,  weight 3/5 -> .03
  //   bin 1: conf (.8+.95)/2    = .875,   acc 1/2, gap .375, weight 2/5 -> .15
  // ECE = .18 -> 18%. The input is unsorted on purpose.
  const std::vector<double> conf = {0.8, 0.55, 0.95, 0.7, 0.6};
  const std::vector<bool> correct = {true, false, false, true, true};
  const Reliability r = reliability(conf, correct, Binning::EqualMass, 2);
  CHECK(r.ece == doctest::Approx(18.0));
  REQUIRE(r.bins.size() == 2);
  CHECK(r.bins[0].count == 3);
  CHECK(r.bins[0].confidence == doctest::Approx(1.85 / 3));
  CHECK(r.bins[0].accuracy == doctest::Approx(2.0 / 3));
  CHECK(r.bins[0].lower == doctest::Approx(0.55));
  CHECK(r.bins[0].upper == doctest::Approx(0.7));
  CHECK(r.bins[1].count == 2);
  CHECK(r.bins[1].confidence == doctest::Approx(0.875));
  CHECK(r.bins[1].accuracy == doctest::Approx(0.5));

  // 100 images all at confidence .8, 80 of them right. With the paper's 100 equal-mass
  // bins every bin holds one image: ECE = (80 * |1 - .8| + 20 * |0 - .8|) / 100 = .32.
  // With 15 equal-width bins they share one bin whose accuracy is .8: ECE = 0.
  std::vector<double> p0(100, 0.8);
  std::vector<int64_t> labels(100, 0);
  for (int i = 0; i < 20; ++i) labels[static_cast<size_t>(5 * i)] = 1;
  const Predictions p = two_class(p0, labels);
  CHECK(ece_equal_mass(p) == doctest::Approx(32.0).epsilon(1e-5));
  CHECK(ece_equal_width(p) == doctest::Approx(0.0).epsilon(1e-5).scale(1));
  const Reliability r100 = reliability(p, Binning::EqualMass, 100);
  CHECK(r100.bins.size() == 100);
  for (const CalibrationBin& bin : r100.bins) CHECK(bin.count == 1);
}

TEST_CASE("metrics: a perfectly confident, always right model has zero ECE in both binnings") {
  const Predictions p = from_logits(3, {50, 0, 0, 0, 50, 0, 0, 0, 50}, {0, 1, 2});
  CHECK(ece_equal_mass(p) == doctest::Approx(0.0).scale(1));
  CHECK(ece_equal_width(p) == doctest::Approx(0.0).scale(1));
  CHECK(reliability(p, Binning::EqualWidth, 15).bins[14].count == 3);
}

TEST_CASE("metrics: temperature scaling recovers a known temperature") {
  // Labels are drawn from softmax(z); the model reports L = T_true * z, so the
  // NLL-optimal temperature for L is T_true (in the limit of many images).
  Rng rng(17);
  const int64_t n = 20000, classes = 10;
  for (const double t_true : {0.5, 2.0, 4.0}) {
    Predictions p;
    p.classes = classes;
    for (int64_t i = 0; i < n; ++i) {
      std::vector<double> z(static_cast<size_t>(classes)), prob(static_cast<size_t>(classes));
      double sum = 0;
      for (int64_t c = 0; c < classes; ++c) {
        z[static_cast<size_t>(c)] = 2.0 * rng.normal();
        sum += prob[static_cast<size_t>(c)] = std::exp(z[static_cast<size_t>(c)]);
      }
      double u = rng.uniform() * sum;
      int64_t label = classes - 1;
      for (int64_t c = 0; c < classes; ++c)
        if ((u -= prob[static_cast<size_t>(c)]) < 0) {
          label = c;
          break;
        }
      p.labels.push_back(label);
      for (double v : z) p.logits.push_back(static_cast<float>(t_true * v));
    }
    const TemperatureFit fit = fit_temperature(p);
    INFO("T_true = " << t_true << ", fitted " << fit.temperature);
    CHECK(fit.temperature == doctest::Approx(t_true).epsilon(0.03));
    CHECK(fit.nll_after <= fit.nll_before + 1e-12);
    CHECK(fit.nll_after == doctest::Approx(nll(p, fit.temperature)));
    // A further fit on the scaled logits finds T = 1, and accuracy is unchanged.
    const Predictions scaled = apply_temperature(p, fit.temperature);
    CHECK(fit_temperature(scaled).temperature == doctest::Approx(1.0).epsilon(1e-3));
    CHECK(top1_accuracy(scaled) == top1_accuracy(p));
    // The fit sits at a stationary point: nudging T either way does not help.
    CHECK(nll(p, fit.temperature * 1.01) >= fit.nll_after);
    CHECK(nll(p, fit.temperature / 1.01) >= fit.nll_after);
  }
  CHECK(fit_temperature(Predictions{}).temperature == 1.0);
  CHECK_THROWS_AS(apply_temperature(Predictions{}, 0.0), std::invalid_argument);
}

TEST_CASE("metrics: churn counts the images whose argmax differs") {
  const Predictions a = from_logits(3, {3, 1, 0, 0, 2, 1, 0, 0, 5, 1, 1, 0}, {0, 1, 2, 0});
  Predictions b = a;
  CHECK(churn(a, b) == 0.0);
  b.logits[3 * 1 + 0] = 9;  // image 1 now predicts class 0
  CHECK(churn(a, b) == doctest::Approx(25.0));
  b.logits[3 * 3 + 2] = 9;  // image 3 now predicts class 2
  CHECK(churn(a, b) == doctest::Approx(50.0));
  CHECK(churn(b, a) == doctest::Approx(50.0));
  const Predictions fewer = from_logits(3, {1, 2, 3}, {0});
  CHECK_THROWS_AS(churn(a, fewer), std::invalid_argument);
}

TEST_CASE("metrics: Jensen-Shannon divergence on known inputs") {
  const Predictions a = from_logits(3, {1, 2, 3, -1, 0, 4}, {0, 0});
  CHECK(js_divergence(a, a) == doctest::Approx(0.0).scale(1));

  // Disjoint one-hot distributions: JS = ln 2, also when the zeros underflow exactly.
  const Predictions one_hot_a = from_logits(2, {100, 0, 1000, 0}, {0, 0});
  const Predictions one_hot_b = from_logits(2, {0, 100, 0, 1000}, {0, 0});
  CHECK(js_divergence(one_hot_a, one_hot_b) == doctest::Approx(std::log(2.0)).epsilon(1e-9));

  // p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4),
  // KL(p||m) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3), KL(q||m) = ln(4/3),
  // JS = 1/4 ln(4/3) + 1/2 ln(4/3) = 3/4 ln(4/3).
  const Predictions half = from_logits(2, {0, 0}, {0});
  const Predictions certain = from_logits(2, {0, -INFINITY}, {0});
  CHECK(js_divergence(half, certain) == doctest::Approx(0.75 * std::log(4.0 / 3)));
  CHECK(js_divergence(certain, half) == doctest::Approx(0.75 * std::log(4.0 / 3)));
  // The mean over images.
  const Predictions two_a = from_logits(2, {0, 0, 7, 7}, {0, 0});
  const Predictions two_b = from_logits(2, {0, -INFINITY, 7, 7}, {0, 0});
  CHECK(js_divergence(two_a, two_b) == doctest::Approx(0.375 * std::log(4.0 / 3)));
}

TEST_CASE("metrics: memorisation of noisy labels") {
  // Six training images; images 1, 2, 3, 5 carry a wrong (noisy) label.
  //   image:     0  1  2  3  4  5
  //   clean:     0  1  2  0  1  2
  //   noisy:     0  2  0  1  1  0
  //   predicted: 0  2  2  1  0  1
  // Noisy ones: 1 (predicts noisy: memorised), 2 (predicts clean: corrected),
  // 3 (memorised), 5 (neither). 4 noisy, 2 memorised (50%), 1 corrected (25%).
  const std::vector<int64_t> clean = {0, 1, 2, 0, 1, 2}, noisy = {0, 2, 0, 1, 1, 0};
  std::vector<float> logits;
  for (int64_t predicted : {0, 2, 2, 1, 0, 1})
    for (int64_t c = 0; c < 3; ++c) logits.push_back(c == predicted ? 3.0f : 0.0f);
  const Predictions p = from_logits(3, logits, noisy);
  const Memorisation m = memorisation(p, noisy, clean);
  CHECK(m.noisy == 4);
  CHECK(m.memorised == 2);
  CHECK(m.corrected == 1);
  CHECK(m.memorised_percent() == doctest::Approx(50.0));
  CHECK(m.corrected_percent() == doctest::Approx(25.0));
  CHECK(memorisation(p, clean, clean).noisy == 0);
  CHECK(memorisation(p, clean, clean).memorised_percent() == 0.0);
  CHECK_THROWS_AS(memorisation(p, noisy, {0, 1}), std::invalid_argument);
}
