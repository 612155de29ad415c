#include "data/split.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

#include "engine/rng.h"

namespace polyak::data {
namespace {

void shuffle(std::vector<int64_t>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

}  // namespace

Split train_val_split(const std::vector<int64_t>& labels, int num_classes, double val_fraction, uint64_t seed,
                      SplitMode mode) {
  if (!(val_fraction >= 0.0 && val_fraction < 1.0)) {
    throw std::invalid_argument("train_val_split: the validation fraction must be in [0, 1), got " +
                                std::to_string(val_fraction));
  }
  const auto n = static_cast<int64_t>(labels.size());
  const auto n_val = static_cast<int64_t>(std::llround(static_cast<double>(n) * val_fraction));
  Rng rng(seed);
  std::vector<char> in_val(n, 0);

  if (mode == SplitMode::Random) {
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), int64_t{0});
    shuffle(order, rng);
    for (int64_t k = 0; k < n_val; ++k) in_val[order[k]] = 1;
  } else {
    if (num_classes <= 0) {
      throw std::invalid_argument("train_val_split: num_classes must be positive, got " + std::to_string(num_classes));
    }
    std::vector<std::vector<int64_t>> members(num_classes);
    for (int64_t i = 0; i < n; ++i) {
      if (labels[i] < 0 || labels[i] >= num_classes) {
        throw std::invalid_argument("train_val_split: label " + std::to_string(labels[i]) + " at index " +
                                    std::to_string(i) + " is outside 0.." + std::to_string(num_classes - 1));
      }
      members[labels[i]].push_back(i);
    }
    // Largest-remainder allocation of the n_val slots.
    std::vector<int64_t> take(num_classes);
    std::vector<double> remainder(num_classes);
    int64_t assigned = 0;
    for (int c = 0; c < num_classes; ++c) {
      const double exact = static_cast<double>(members[c].size()) * val_fraction;
      take[c] = static_cast<int64_t>(std::floor(exact));
      remainder[c] = exact - static_cast<double>(take[c]);
      assigned += take[c];
    }
    std::vector<int> by_remainder(num_classes);
    std::iota(by_remainder.begin(), by_remainder.end(), 0);
    std::stable_sort(by_remainder.begin(), by_remainder.end(),
                     [&](int a, int b) { return remainder[a] > remainder[b]; });
    for (int k = 0; assigned < n_val && k < num_classes; ++k) {
      const int c = by_remainder[k];
      if (take[c] < static_cast<int64_t>(members[c].size())) ++take[c], ++assigned;
    }
    for (int c = 0; c < num_classes; ++c) {
      shuffle(members[c], rng);
      for (int64_t k = 0; k < take[c]; ++k) in_val[members[c][k]] = 1;
    }
  }

  Split split;
  split.val.reserve(n_val);
  split.train.reserve(n - n_val);
  for (int64_t i = 0; i < n; ++i) (in_val[i] ? split.val : split.train).push_back(i);
  return split;
}

}  // namespace polyak::data
