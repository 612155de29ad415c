// Seeded train/validation split of a labelled set (the 80/20 model-selection split).
//
// Stratified (the default): every class keeps the same share in both parts. Class c's
// n_c images get floor(n_c * f) validation slots, and the slots still needed to reach
// round(n * f) in total go to the classes with the largest remainders n_c * f -
// floor(n_c * f) (ties: lower class first), so the validation part always has
// round(n * f) images, and exactly n_c * f per class when that is a whole number
// (1,000 per CIFAR-10 class at f = 0.2). Which images of class c: its indices in
// increasing order, Fisher-Yates shuffled with rng.below, first ones taken; the classes
// are shuffled in order 0..K-1 with one Rng(seed).
// Random: the indices 0..n-1 Fisher-Yates shuffled with Rng(seed), the first
// round(n * f) to validation.
// Both parts come back sorted, disjoint, and together 0..n-1.
#pragma once

#include <cstdint>
#include <vector>

namespace polyak::data {

enum class SplitMode { Stratified, Random };

struct Split {
  std::vector<int64_t> train;  // sorted
  std::vector<int64_t> val;    // sorted
};

// `labels` are the labels of the whole set (index i is image i), each in
// [0, num_classes) (only checked for Stratified). val_fraction in [0, 1): 0 gives an
// empty validation part and every index in train. std::invalid_argument for a fraction
// out of range or a label out of range.
Split train_val_split(const std::vector<int64_t>& labels, int num_classes, double val_fraction, uint64_t seed,
                      SplitMode mode = SplitMode::Stratified);

}  // namespace polyak::data
