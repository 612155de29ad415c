// Label files and synthetic label noise; see labels.h for the conventions.
#include "data/labels.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>

#include "engine/rng.h"

namespace polyak::data {
namespace {

void check_rate(double rate, const char* what) {
  if (!(rate >= 0.0 && rate <= 1.0)) {
    throw std::invalid_argument(std::string(what) + ": the noise rate must be in [0, 1], got " + std::to_string(rate));
  }
}

void check_labels(const std::vector<int64_t>& labels, int64_t num_classes, const char* what) {
  for (size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes) {
      throw std::invalid_argument(std::string(what) + ": label " + std::to_string(labels[i]) + " at index " +
                                  std::to_string(i) + " is outside 0.." + std::to_string(num_classes - 1));
    }
  }
}

// The noisy labels: a flip with probability `rate` per label, to the class `flip` draws.
template <class Flip>
NoisyLabels add_noise(const std::vector<int64_t>& clean, double rate, uint64_t seed, Flip flip) {
  Rng rng(seed);
  NoisyLabels out;
  out.clean = clean;
  out.labels = clean;
  for (size_t i = 0; i < clean.size(); ++i) {
    if (static_cast<double>(rng.uniform()) < rate) out.labels[i] = flip(clean[i], rng);
  }
  return out;
}

}  // namespace

int64_t NoisyLabels::num_noisy() const {
  int64_t n = 0;
  for (size_t i = 0; i < labels.size(); ++i) n += labels[i] != clean[i];
  return n;
}

double NoisyLabels::noise_rate() const {
  return labels.empty() ? 0.0 : static_cast<double>(num_noisy()) / static_cast<double>(labels.size());
}

std::vector<int64_t> read_label_file(const std::string& path, int64_t count, int num_classes) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) {
    throw DataError("label file " + path + (fs::exists(path, ec) ? " is not a regular file" : " does not exist"));
  }
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) throw DataError("cannot read label file " + path + ": " + ec.message());
  if (size != static_cast<uintmax_t>(count)) {
    throw DataError("label file " + path + " has " + std::to_string(size) + " bytes; expected exactly " +
                    std::to_string(count) + " (one uint8 label per image, in the order of the images)");
  }
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw DataError("cannot open label file " + path + ": " + std::strerror(errno));
  std::vector<uint8_t> bytes(static_cast<size_t>(count));
  if (count > 0 && std::fread(bytes.data(), 1, bytes.size(), file.get()) != bytes.size()) {
    throw DataError("cannot read label file " + path + ": short read");
  }
  std::vector<int64_t> labels(bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] >= num_classes) {
      throw DataError("label file " + path + ": label " + std::to_string(bytes[i]) + " at byte " + std::to_string(i) +
                      " is outside 0.." + std::to_string(num_classes - 1) + " (" + std::to_string(num_classes) +
                      " classes)");
    }
    labels[i] = bytes[i];
  }
  return labels;
}

NoisyLabels symmetric_noise(const std::vector<int64_t>& clean, int num_classes, double rate, uint64_t seed) {
  check_rate(rate, "symmetric_noise");
  if (num_classes < 2) {
    throw std::invalid_argument("symmetric_noise: needs at least 2 classes, got " + std::to_string(num_classes));
  }
  check_labels(clean, num_classes, "symmetric_noise");
  return add_noise(clean, rate, seed, [num_classes](int64_t c, Rng& rng) {
    // A uniform class among the other K - 1: draw from [0, K-1) and skip over c.
    const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(num_classes - 1)));
    return j >= c ? j + 1 : j;
  });
}

NoisyLabels asymmetric_noise(const std::vector<int64_t>& clean, const std::vector<int64_t>& map, double rate,
                             uint64_t seed) {
  check_rate(rate, "asymmetric_noise");
  const auto num_classes = static_cast<int64_t>(map.size());
  check_labels(map, num_classes, "asymmetric_noise (class map)");
  check_labels(clean, num_classes, "asymmetric_noise");
  return add_noise(clean, rate, seed, [&map](int64_t c, Rng&) { return map[c]; });
}

const std::vector<int64_t>& cifar10_asymmetric_map() {
  // airplane 0, automobile 1, bird 2, cat 3, deer 4, dog 5, frog 6, horse 7, ship 8, truck 9
  static const std::vector<int64_t> map = {0, 1, 0, 5, 7, 3, 6, 7, 8, 1};
  return map;
}

const std::vector<int64_t>& cifar100_coarse_of_fine() {
  static const std::vector<int64_t> coarse = {
      4,  1,  14, 8,  0,  6,  7,  7,  18, 3,  3,  14, 9,  18, 7,  11, 3,  9,  7,  11,
      6,  11, 5,  10, 7,  6,  13, 15, 3,  15, 0,  11, 1,  10, 12, 14, 16, 9,  11, 5,
      5,  19, 8,  8,  15, 13, 14, 17, 18, 10, 16, 4,  17, 4,  2,  0,  17, 4,  18, 17,
      10, 3,  2,  12, 12, 16, 12, 1,  9,  19, 2,  10, 0,  1,  16, 12, 9,  13, 15, 13,
      16, 19, 2,  4,  6,  19, 5,  5,  8,  19, 18, 1,  2,  15, 6,  0,  17, 8,  14, 13};
  return coarse;
}

const std::vector<int64_t>& cifar100_asymmetric_map() {
  static const std::vector<int64_t> map = [] {
    const std::vector<int64_t>& coarse = cifar100_coarse_of_fine();
    std::vector<std::vector<int64_t>> members(20);
    for (int64_t f = 0; f < 100; ++f) members[coarse[f]].push_back(f);  // increasing order
    std::vector<int64_t> m(100);
    for (const auto& group : members) {
      for (size_t k = 0; k < group.size(); ++k) m[group[k]] = group[(k + 1) % group.size()];
    }
    return m;
  }();
  return map;
}

const std::vector<int64_t>& asymmetric_map(int num_classes) {
  if (num_classes == 10) return cifar10_asymmetric_map();
  if (num_classes == 100) return cifar100_asymmetric_map();
  throw std::invalid_argument("asymmetric label noise has a standard class map for CIFAR-10 (10 classes) and "
                              "CIFAR-100 fine labels (100 classes), not for " +
                              std::to_string(num_classes) + " classes");
}

}  // namespace polyak::data
