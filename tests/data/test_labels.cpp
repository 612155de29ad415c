// Label files (CIFAR-N), synthetic label noise and the train/validation split.
#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/cifar.h"
#include "data/labels.h"
#include "data/split.h"
#include "engine/rng.h"
#include "support/file_checks.h"
#include "support/gradcheck.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;
using namespace polyak;
using namespace polyak::data;
using polyak::testing::contains;
using polyak::testing::error_of;
using polyak::testing::TempDir;
using polyak::testing::write_file;

namespace {

// n labels, n / num_classes per class (n a multiple of it), interleaved.
std::vector<int64_t> balanced_labels(int64_t n, int num_classes) {
  std::vector<int64_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = (i * 7) % num_classes;
  return labels;
}

}  // namespace

// ------------------------------------------------------------------ label files

TEST_CASE("cifar-10n worse labels: 40.21% of the CIFAR-10 train labels are wrong") {
  const std::string labels_file = testing::real_data_path("cifar-n/cifar10n_worse_label.u8");
  const std::string train_file = testing::real_data_path("cifar10/data_batch_1.bin.gz");
  if (labels_file.empty() || train_file.empty()) return;
  const ImageSet train = load_cifar10(fs::path(train_file).parent_path().string(), CifarSplit::Train);
  const std::vector<int64_t> original = train.labels;
  const NoisyLabels noise{read_label_file(labels_file, train.count, train.num_classes), original};
  CHECK(noise.count() == 50000);
  CHECK(std::abs(noise.noise_rate() - 0.4021) <= 0.0001);
  // The clean_label file of the same release is the CIFAR-10 train labels.
  const std::string clean_file = testing::real_data_path("cifar-n/cifar10n_clean_label.u8");
  if (!clean_file.empty()) CHECK(read_label_file(clean_file, 50000, 10) == original);
}

TEST_CASE("label files: wrong size, label out of range and a missing file name the file") {
  TempDir dir;
  const fs::path short_file = dir.path / "short.u8";
  write_file(short_file, std::vector<uint8_t>(99, 1));
  std::string msg = error_of<DataError>([&] { read_label_file(short_file.string(), 100, 10); });
  CHECK(contains(msg, "short.u8"));
  CHECK(contains(msg, "99 bytes"));
  CHECK(contains(msg, "100"));

  const fs::path bad = dir.path / "bad.u8";
  std::vector<uint8_t> bytes(100, 3);
  bytes[42] = 10;
  write_file(bad, bytes);
  msg = error_of<DataError>([&] { read_label_file(bad.string(), 100, 10); });
  CHECK(contains(msg, "bad.u8"));
  CHECK(contains(msg, "byte 42"));
  CHECK(read_label_file(bad.string(), 100, 11)[42] == 10);

  msg = error_of<DataError>([&] { read_label_file((dir.path / "absent.u8").string(), 100, 10); });
  CHECK(contains(msg, "absent.u8"));

  write_file(dir.path / "good.u8", std::vector<uint8_t>(100, 9));
  CHECK(read_label_file((dir.path / "good.u8").string(), 100, 10) == std::vector<int64_t>(100, 9));
}

// ------------------------------------------------------------------ synthetic noise

TEST_CASE("symmetric noise: realised rate, flips go to a uniform other class, seeded") {
  const std::vector<int64_t> clean = balanced_labels(50000, 10);
  for (double rate : {0.2, 0.4, 0.8}) {
    const NoisyLabels noise = symmetric_noise(clean, 10, rate, 1234);
    CHECK(noise.clean == clean);
    CHECK(std::abs(noise.noise_rate() - rate) < 0.01);
  }
  const NoisyLabels noise = symmetric_noise(clean, 10, 0.4, 1234);
  // Replaying the documented draws: a label is flipped exactly when its uniform is
  // below the rate, and a flipped label is never its clean class.
  Rng replay(1234);
  int64_t flipped = 0;
  std::vector<std::vector<int64_t>> confusion(10, std::vector<int64_t>(10, 0));
  for (size_t i = 0; i < clean.size(); ++i) {
    const bool flip = replay.uniform() < 0.4f;
    if (flip) {
      const auto j = static_cast<int64_t>(replay.below(9));
      CHECK(noise.labels[i] == (j >= clean[i] ? j + 1 : j));
      ++flipped;
    }
    if (flip != noise.is_noisy(static_cast<int64_t>(i))) FAIL_CHECK("label " << i << " flipped " << flip);
    ++confusion[clean[i]][noise.labels[i]];
  }
  CHECK(flipped == noise.num_noisy());
  // Each wrong class gets about 5000 * 0.4 / 9 = 222 of each class's labels.
  for (int a = 0; a < 10; ++a)
    for (int b = 0; b < 10; ++b)
      if (a != b) CHECK(std::abs(static_cast<double>(confusion[a][b]) - 5000.0 * 0.4 / 9) < 60);

  CHECK(symmetric_noise(clean, 10, 0.4, 1234).labels == noise.labels);
  CHECK(symmetric_noise(clean, 10, 0.4, 1235).labels != noise.labels);
  CHECK(symmetric_noise(clean, 10, 0.0, 7).labels == clean);
  CHECK(symmetric_noise(clean, 10, 1.0, 7).num_noisy() == 50000);
  CHECK_THROWS_AS(symmetric_noise(clean, 10, 1.5, 7), std::invalid_argument);
  CHECK_THROWS_AS(symmetric_noise(clean, 10, -0.1, 7), std::invalid_argument);
  CHECK_THROWS_AS(symmetric_noise(clean, 10, std::nan(""), 7), std::invalid_argument);
  CHECK_THROWS_AS(symmetric_noise(clean, 5, 0.2, 7), std::invalid_argument);  // label 9 >= 5
  CHECK_THROWS_AS(symmetric_noise({0}, 1, 0.2, 7), std::invalid_argument);
}

TEST_CASE("asymmetric noise: the CIFAR-10 map, realised rate on the classes that flip, seeded") {
  const std::vector<int64_t>& map = cifar10_asymmetric_map();
  // truck->automobile, bird->airplane, deer->horse, cat<->dog; the rest stay.
  CHECK(map == std::vector<int64_t>{0, 1, 0, 5, 7, 3, 6, 7, 8, 1});
  CHECK(&asymmetric_map(10) == &map);
  CHECK_THROWS_AS(asymmetric_map(20), std::invalid_argument);

  const std::vector<int64_t> clean = balanced_labels(50000, 10);
  const NoisyLabels noise = asymmetric_noise(clean, map, 0.4, 99);
  int64_t movable = 0, moved = 0;
  for (size_t i = 0; i < clean.size(); ++i) {
    const int64_t c = clean[i];
    if (noise.labels[i] != c && noise.labels[i] != map[c]) FAIL_CHECK("label " << i << " went outside the map");
    if (map[c] != c) {
      ++movable;
      moved += noise.labels[i] != c;
    }
  }
  CHECK(movable == 25000);
  CHECK(std::abs(static_cast<double>(moved) / static_cast<double>(movable) - 0.4) < 0.01);
  CHECK(std::abs(noise.noise_rate() - 0.2) < 0.01);
  CHECK(asymmetric_noise(clean, map, 0.4, 99).labels == noise.labels);
  CHECK(asymmetric_noise(clean, map, 0.4, 98).labels != noise.labels);
  CHECK(asymmetric_noise(clean, map, 1.0, 1).labels ==
        [&] {
          std::vector<int64_t> all(clean.size());
          for (size_t i = 0; i < clean.size(); ++i) all[i] = map[clean[i]];
          return all;
        }());
  CHECK_THROWS_AS(asymmetric_noise(clean, {0, 1, 2}, 0.1, 1), std::invalid_argument);      // label 9 >= 3
  CHECK_THROWS_AS(asymmetric_noise({0, 1}, {1, 2}, 0.1, 1), std::invalid_argument);        // map entry 2 >= 2
}

TEST_CASE("asymmetric noise: the CIFAR-100 map cycles through each superclass") {
  const std::vector<int64_t>& map = cifar100_asymmetric_map();
  const std::vector<int64_t>& coarse = cifar100_coarse_of_fine();
  REQUIRE(map.size() == 100);
  CHECK(&asymmetric_map(100) == &map);
  std::vector<int> per_coarse(20, 0);
  for (int64_t f = 0; f < 100; ++f) {
    ++per_coarse[coarse[f]];
    CHECK(map[f] != f);
    CHECK(coarse[map[f]] == coarse[f]);
    int64_t g = f;  // a 5-cycle
    for (int k = 0; k < 5; ++k) g = map[g];
    CHECK(g == f);
  }
  CHECK(per_coarse == std::vector<int>(20, 5));
  // aquatic mammals: beaver 4, dolphin 30, otter 55, seal 72, whale 95.
  CHECK(map[4] == 30);
  CHECK(map[30] == 55);
  CHECK(map[72] == 95);
  CHECK(map[95] == 4);
  const std::vector<int64_t> clean = balanced_labels(50000, 100);
  const NoisyLabels noise = asymmetric_noise(clean, map, 0.3, 5);
  CHECK(std::abs(noise.noise_rate() - 0.3) < 0.01);

  // The built-in superclass table matches the real (coarse, fine) train labels.
  const std::string file = testing::real_data_path("cifar100/train_labels_coarse_fine.u8.gz");
  if (file.empty()) return;
  gzFile gz = gzopen(file.c_str(), "rb");
  REQUIRE(gz != nullptr);
  std::vector<uint8_t> bytes(100000);
  CHECK(gzread(gz, bytes.data(), static_cast<unsigned>(bytes.size())) == 100000);
  gzclose(gz);
  for (size_t i = 0; i < bytes.size(); i += 2) {
    if (coarse[bytes[i + 1]] != bytes[i]) FAIL_CHECK("record " << i / 2 << ": fine " << int(bytes[i + 1]));
  }
}

// ------------------------------------------------------------------ split

TEST_CASE("train/val split: stratified sizes, disjoint, sorted, seeded") {
  const std::vector<int64_t> labels = balanced_labels(50000, 10);
  const Split split = train_val_split(labels, 10, 0.2, 42);
  CHECK(split.val.size() == 10000);
  CHECK(split.train.size() == 40000);
  CHECK(std::is_sorted(split.train.begin(), split.train.end()));
  CHECK(std::is_sorted(split.val.begin(), split.val.end()));
  std::vector<int64_t> all = split.train;
  all.insert(all.end(), split.val.begin(), split.val.end());
  std::sort(all.begin(), all.end());
  std::vector<int64_t> expected(50000);
  std::iota(expected.begin(), expected.end(), int64_t{0});
  CHECK(all == expected);  // disjoint and complete
  std::vector<int> per_class(10, 0);
  for (int64_t i : split.val) ++per_class[labels[i]];
  CHECK(per_class == std::vector<int>(10, 1000));

  const Split again = train_val_split(labels, 10, 0.2, 42);
  CHECK(again.train == split.train);
  CHECK(again.val == split.val);
  CHECK(train_val_split(labels, 10, 0.2, 43).val != split.val);

  const Split none = train_val_split(labels, 10, 0.0, 42);
  CHECK(none.val.empty());
  CHECK(none.train == expected);

  // Uneven classes: the total is still round(n * f).
  std::vector<int64_t> uneven;
  for (int c = 0; c < 3; ++c)
    for (int k = 0; k < 7 + 3 * c; ++k) uneven.push_back(c);  // 7, 10, 13
  const Split u = train_val_split(uneven, 3, 0.25, 1);
  CHECK(u.val.size() == 8);  // round(30 * 0.25) = round(7.5)
  CHECK(u.train.size() + u.val.size() == 30);

  CHECK_THROWS_AS(train_val_split(labels, 10, 1.0, 1), std::invalid_argument);
  CHECK_THROWS_AS(train_val_split(labels, 10, -0.1, 1), std::invalid_argument);
  CHECK_THROWS_AS(train_val_split(labels, 10, std::nan(""), 1), std::invalid_argument);
  CHECK_THROWS_AS(train_val_split(labels, 5, 0.2, 1), std::invalid_argument);  // label 9 >= 5
}

TEST_CASE("train/val split: random mode") {
  const std::vector<int64_t> labels = balanced_labels(1001, 10);
  const Split split = train_val_split(labels, 10, 0.3, 8, SplitMode::Random);
  CHECK(split.val.size() == 300);  // round(300.3)
  CHECK(split.train.size() == 701);
  std::set<int64_t> seen(split.train.begin(), split.train.end());
  for (int64_t i : split.val) CHECK(seen.insert(i).second);
  CHECK(seen.size() == 1001);
  CHECK(std::is_sorted(split.val.begin(), split.val.end()));
  CHECK(train_val_split(labels, 10, 0.3, 8, SplitMode::Random).val == split.val);
  CHECK(train_val_split(labels, 10, 0.3, 9, SplitMode::Random).val != split.val);
}
