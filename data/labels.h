// Label sources for noisy-label training: human label files (CIFAR-10N / CIFAR-100N)
// and synthetic symmetric or asymmetric noise, always with the clean labels kept, so
// that memorisation of the wrong labels can be measured later.
//
// Conventions:
//   symmetric noise   each label, with probability `rate`, is replaced by a class drawn
//                     uniformly from the OTHER num_classes - 1 classes (the usual
//                     convention, e.g. Patrini et al. 2017, Co-teaching): the expected
//                     fraction of wrong labels is `rate` itself, and a flipped label is
//                     never the clean one.
//   asymmetric noise  each label c, with probability `rate`, becomes map[c] (a label with
//                     map[c] == c never changes, so the overall fraction of wrong labels
//                     is `rate` times the share of such labels). The maps:
//                     CIFAR-10  truck->automobile, bird->airplane, deer->horse, cat<->dog
//                               (Patrini et al. 2017); the other five classes stay;
//                     CIFAR-100 each fine class goes to the next fine class of its
//                               superclass, circularly, the five fine classes of a
//                               superclass taken in increasing label order (Patrini et
//                               al. 2017): e.g. beaver(4) -> dolphin(30), and the last,
//                               whale(95) -> beaver(4). (Patrini et al.'s reference
//                               code flips within blocks of five consecutive labels
//                               [5i, 5i+5), which are not superclasses in CIFAR-100's
//                               alphabetical label order; we use the real superclasses.)
//   random draws      Rng(seed), in label order: one uniform() per label (flip when
//                     < rate), then, for a flipped symmetric label, one below(K - 1).
//                     The same clean labels, rate and seed give the same noisy labels.
//   label files       `count` raw uint8 labels in train order, nothing else (the
//                     cifar10n_<key>.u8 / cifar100n_<key>.u8 files of shared/data/cifar-n).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/cifar.h"

namespace polyak::data {

// Labels as training sees them, and the clean ones they came from (same length).
struct NoisyLabels {
  std::vector<int64_t> labels;  // what training sees
  std::vector<int64_t> clean;   // the original labels

  int64_t count() const { return static_cast<int64_t>(labels.size()); }
  bool is_noisy(int64_t i) const { return labels[i] != clean[i]; }
  int64_t num_noisy() const;
  double noise_rate() const;  // num_noisy / count (0 for no labels)
};

// Reads a file of exactly `count` uint8 labels, each < num_classes. DataError naming the
// file when it is missing, has the wrong size, or holds a label out of range.
std::vector<int64_t> read_label_file(const std::string& path, int64_t count, int num_classes);

// Symmetric noise (see above). std::invalid_argument for a rate outside [0, 1], fewer
// than 2 classes, or a clean label outside [0, num_classes).
NoisyLabels symmetric_noise(const std::vector<int64_t>& clean, int num_classes, double rate, uint64_t seed);

// Asymmetric noise with class map `map` (map.size() classes, each entry a class).
NoisyLabels asymmetric_noise(const std::vector<int64_t>& clean, const std::vector<int64_t>& map, double rate,
                             uint64_t seed);

// The standard maps above: cifar10_asymmetric_map() has 10 entries, cifar100_... 100.
const std::vector<int64_t>& cifar10_asymmetric_map();
const std::vector<int64_t>& cifar100_asymmetric_map();
// The map for a CIFAR-10 (10 classes) or CIFAR-100 fine (100 classes) label set;
// std::invalid_argument for any other number of classes.
const std::vector<int64_t>& asymmetric_map(int num_classes);

// The CIFAR-100 superclass (coarse label, 0..19) of each fine label (100 entries).
const std::vector<int64_t>& cifar100_coarse_of_fine();

}  // namespace polyak::data
