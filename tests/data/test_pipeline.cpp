// The training data pipeline: label files and synthetic label noise, the train/val
// split, crop + flip augmentation, the prefetching batch loader (coverage,
// determinism, resume) and image folders decoded with stb_image.
#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#if __has_include(<stb/stb_image_write.h>)
#include <stb/stb_image_write.h>
#else
#include <stb_image_write.h>
#endif

#include "data/augment.h"
#include "data/cifar.h"
#include "data/folder.h"
#include "data/labels.h"
#include "data/loader.h"
#include "data/split.h"
#include "support/gradcheck.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;
using namespace polyak;
using namespace polyak::data;
using polyak::testing::TempDir;

namespace {

void write_file(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

// The message of the DataError that `f` throws ("" if it throws none).
template <class F>
std::string data_error(F&& f) {
  try {
    f();
  } catch (const DataError& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// n labels, n / num_classes per class (n a multiple of it), interleaved.
std::vector<int64_t> balanced_labels(int64_t n, int num_classes) {
  std::vector<int64_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = (i * 7) % num_classes;
  return labels;
}

// A set of `n` tiny images whose pixels identify the image: pixel value (i*3 + c*7 + p) & 255.
ImageSet tiny_set(int64_t n, int channels = 3, int height = 4, int width = 5, int num_classes = 10) {
  ImageSet set;
  set.count = n;
  set.channels = channels;
  set.height = height;
  set.width = width;
  set.num_classes = num_classes;
  set.pixels.resize(n * set.image_size());
  set.labels.resize(n);
  const int64_t plane = int64_t{height} * width;
  for (int64_t i = 0; i < n; ++i) {
    set.labels[i] = (i * 3) % num_classes;
    for (int c = 0; c < channels; ++c)
      for (int64_t p = 0; p < plane; ++p)
        set.pixels[i * set.image_size() + c * plane + p] = static_cast<uint8_t>((i * 3 + c * 7 + p) & 255);
  }
  set.mean.assign(channels, 0.25f);
  set.stddev.assign(channels, 0.5f);
  return set;
}

// The straightforward definition of crop + flip, for comparison.
uint8_t reference_pixel(const uint8_t* img, int height, int width, int pad, const CropFlip& cf, int c, int y, int x) {
  const int xu = cf.flip ? width - 1 - x : x;
  const int sy = y + cf.dy - pad, sx = xu + cf.dx - pad;
  if (sy < 0 || sy >= height || sx < 0 || sx >= width) return 0;
  return img[(c * height + sy) * width + sx];
}

std::vector<Batch> one_epoch(Loader& loader) {
  std::vector<Batch> out;
  while (std::optional<Batch> b = loader.next()) out.push_back(std::move(*b));
  return out;
}

void check_same_batch(const Batch& a, const Batch& b) {
  CHECK(a.epoch == b.epoch);
  CHECK(a.index == b.index);
  CHECK(a.indices == b.indices);
  CHECK(a.images.shape() == b.images.shape());
  CHECK(a.images.to_vector<float>() == b.images.to_vector<float>());
  CHECK(a.labels.to_vector<int64_t>() == b.labels.to_vector<int64_t>());
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
  std::string msg = data_error([&] { read_label_file(short_file.string(), 100, 10); });
  CHECK(contains(msg, "short.u8"));
  CHECK(contains(msg, "99 bytes"));
  CHECK(contains(msg, "100"));

  const fs::path bad = dir.path / "bad.u8";
  std::vector<uint8_t> bytes(100, 3);
  bytes[42] = 10;
  write_file(bad, bytes);
  msg = data_error([&] { read_label_file(bad.string(), 100, 10); });
  CHECK(contains(msg, "bad.u8"));
  CHECK(contains(msg, "byte 42"));
  CHECK(read_label_file(bad.string(), 100, 11)[42] == 10);

  msg = data_error([&] { read_label_file((dir.path / "absent.u8").string(), 100, 10); });
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

// ------------------------------------------------------------------ augmentation

TEST_CASE("crop_flip: known offsets give known pixels, zero padding, mirror") {
  // One channel-major 2 x 3 x 4 image with pixel (c, y, x) = 100*c + 10*y + x + 1 (never 0).
  const int C = 2, H = 3, W = 4, pad = 2;
  std::vector<uint8_t> img(C * H * W);
  for (int c = 0; c < C; ++c)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) img[(c * H + y) * W + x] = static_cast<uint8_t>(100 * c + 10 * y + x + 1);
  std::vector<uint8_t> out(img.size());

  // Centre window, no flip: the image itself.
  crop_flip(img.data(), C, H, W, pad, {pad, pad, false}, out.data());
  CHECK(out == img);
  // Centre window, flipped: each row mirrored.
  crop_flip(img.data(), C, H, W, pad, {pad, pad, true}, out.data());
  CHECK(out[0] == 4);                  // (0,0,0) <- (0,0,3)
  CHECK(out[3] == 1);
  CHECK(out[(1 * H + 2) * W + 1] == 123);  // (1,2,1) <- (1,2,2)
  // Top-left window (dy = dx = 0): shifted right and down by 2, zeros above and left.
  crop_flip(img.data(), C, H, W, pad, {0, 0, false}, out.data());
  const std::vector<uint8_t> top_left_c0 = {0, 0, 0, 0,  //
                                            0, 0, 0, 0,  //
                                            0, 0, 1, 2};
  CHECK(std::vector<uint8_t>(out.begin(), out.begin() + H * W) == top_left_c0);
  CHECK(out[H * W + 2 * W + 3] == 102);
  // dy = 3, dx = 1: source row y+1, column x-1.
  crop_flip(img.data(), C, H, W, pad, {3, 1, false}, out.data());
  const std::vector<uint8_t> shifted_c0 = {0, 11, 12, 13,  //
                                           0, 21, 22, 23,  //
                                           0, 0, 0, 0};
  CHECK(std::vector<uint8_t>(out.begin(), out.begin() + H * W) == shifted_c0);
  // Same window, flipped.
  crop_flip(img.data(), C, H, W, pad, {3, 1, true}, out.data());
  const std::vector<uint8_t> shifted_flipped_c0 = {13, 12, 11, 0,  //
                                                   23, 22, 21, 0,  //
                                                   0, 0, 0, 0};
  CHECK(std::vector<uint8_t>(out.begin(), out.begin() + H * W) == shifted_flipped_c0);

  // Every window and flip against the plain definition.
  for (int dy = 0; dy <= 2 * pad; ++dy)
    for (int dx = 0; dx <= 2 * pad; ++dx)
      for (bool flip : {false, true}) {
        const CropFlip cf{dy, dx, flip};
        crop_flip(img.data(), C, H, W, pad, cf, out.data());
        for (int c = 0; c < C; ++c)
          for (int y = 0; y < H; ++y)
            for (int x = 0; x < W; ++x)
              if (out[(c * H + y) * W + x] != reference_pixel(img.data(), H, W, pad, cf, c, y, x))
                FAIL_CHECK("dy " << dy << " dx " << dx << " flip " << flip << " at " << c << "," << y << "," << x);
      }
  // A pad wider than the image gives an all-zero window.
  crop_flip(img.data(), C, H, W, 5, {0, 0, false}, out.data());
  CHECK(std::all_of(out.begin(), out.end(), [](uint8_t v) { return v == 0; }));
}

TEST_CASE("draw_crop_flip: documented draw order, uniform offsets, fair flips") {
  const AugmentOptions options;  // crop, pad 4, flip
  Rng rng(77), replay(77);
  std::vector<int> dy_count(9, 0);
  int flips = 0;
  const int n = 18000;
  for (int i = 0; i < n; ++i) {
    const CropFlip cf = draw_crop_flip(options, rng);
    CHECK(cf.dy == static_cast<int>(replay.below(9)));
    CHECK(cf.dx == static_cast<int>(replay.below(9)));
    CHECK(cf.flip == (replay.below(2) == 1));
    ++dy_count[cf.dy];
    flips += cf.flip;
  }
  for (int c : dy_count) CHECK(std::abs(c - n / 9) < 200);
  CHECK(std::abs(flips - n / 2) < 400);
  CHECK(rng.state() == replay.state());

  // No crop: centred, no draws for it; no flip: no draw at all.
  Rng quiet(5);
  const CropFlip none = draw_crop_flip({false, 4, false}, quiet);
  CHECK(none.dy == 4);
  CHECK(none.dx == 4);
  CHECK(!none.flip);
  CHECK(quiet.state() == Rng(5).state());
}

TEST_CASE("write_batch: plain equals to_tensor, augmented equals crop_flip then normalise") {
  const ImageSet set = tiny_set(6);
  const Normalizer norm(set);
  const std::vector<int64_t> idx = {5, 0, 3};
  std::vector<float> out(idx.size() * set.image_size());
  write_batch(set, idx, norm, nullptr, nullptr, out.data());
  CHECK(out == to_tensor(set, idx).to_vector<float>());

  const AugmentOptions aug{true, 2, true};
  Rng rng(11), replay(11);
  write_batch(set, idx, norm, &aug, &rng, out.data());
  std::vector<uint8_t> scratch(set.image_size());
  for (size_t i = 0; i < idx.size(); ++i) {
    const CropFlip cf = draw_crop_flip(aug, replay);
    crop_flip(set.image(idx[i]), set.channels, set.height, set.width, aug.pad, cf, scratch.data());
    for (int64_t k = 0; k < set.image_size(); ++k) {
      const float expected = (static_cast<float>(scratch[k]) / 255.0f - 0.25f) / 0.5f;
      if (out[i * set.image_size() + k] != expected) FAIL_CHECK("image " << i << " value " << k);
    }
  }
  // Padding zeros become (0 - mean) / std.
  CHECK(norm.value(0, 0) == -0.5f);
  CHECK_THROWS_AS(write_batch(set, {6}, norm, nullptr, nullptr, out.data()), std::out_of_range);
}

// ------------------------------------------------------------------ loader

TEST_CASE("loader: each index once per epoch, labels and images match, with and without drop_last") {
  const ImageSet set = tiny_set(103);
  std::vector<int64_t> indices(103);
  std::iota(indices.begin(), indices.end(), int64_t{0});
  for (bool drop_last : {false, true}) {
    CAPTURE(drop_last);
    LoaderOptions options;
    options.batch_size = 10;
    options.drop_last = drop_last;
    options.seed = 3;
    Loader loader(set, indices, options);
    CHECK(loader.size() == 103);
    CHECK(loader.batches_per_epoch() == (drop_last ? 10 : 11));
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      CHECK(loader.state() == Loader::State{epoch, 0});
      const std::vector<Batch> batches = one_epoch(loader);
      CHECK(loader.state() == Loader::State{epoch + 1, 0});
      REQUIRE(static_cast<int64_t>(batches.size()) == loader.batches_per_epoch());
      std::vector<int64_t> seen;
      for (size_t b = 0; b < batches.size(); ++b) {
        const Batch& batch = batches[b];
        CHECK(batch.epoch == epoch);
        CHECK(batch.index == static_cast<int64_t>(b));
        const int64_t n = static_cast<int64_t>(batch.indices.size());
        CHECK(n == (b == 10 ? 3 : 10));
        CHECK(batch.images.shape() == Shape{n, 3, 4, 5});
        CHECK(batch.labels.shape() == Shape{n});
        CHECK(batch.labels.dtype() == DType::I64);
        CHECK(batch.images.to_vector<float>() == to_tensor(set, batch.indices).to_vector<float>());
        CHECK(batch.labels.to_vector<int64_t>() == labels_tensor(set, batch.indices).to_vector<int64_t>());
        seen.insert(seen.end(), batch.indices.begin(), batch.indices.end());
      }
      std::vector<int64_t> order = loader.epoch_order(epoch);
      if (drop_last) order.resize(100);
      CHECK(seen == order);
      std::sort(seen.begin(), seen.end());
      CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());  // no repeats
      if (!drop_last) CHECK(seen == indices);
    }
  }
}

TEST_CASE("loader: same seed same batches, prefetch or not; epochs and seeds differ") {
  const ImageSet set = tiny_set(50);
  std::vector<int64_t> indices(50);
  std::iota(indices.begin(), indices.end(), int64_t{0});
  LoaderOptions options;
  options.batch_size = 8;
  options.augment = true;
  options.augment_options.pad = 2;
  options.seed = 17;
  Loader a(set, indices, options);
  options.prefetch = 0;
  Loader sync(set, indices, options);
  options.prefetch = 3;
  Loader b(set, indices, options);
  for (int epoch = 0; epoch < 3; ++epoch) {
    const std::vector<Batch> ea = one_epoch(a), eb = one_epoch(b), es = one_epoch(sync);
    REQUIRE(ea.size() == 7);
    REQUIRE(eb.size() == 7);
    REQUIRE(es.size() == 7);
    for (size_t k = 0; k < ea.size(); ++k) {
      check_same_batch(ea[k], eb[k]);
      check_same_batch(ea[k], es[k]);
    }
  }
  // Augmentation changed the pixels (some image differs from its plain version).
  Loader c(set, indices, options);
  const std::optional<Batch> first = c.next();
  REQUIRE(first);
  CHECK(first->images.to_vector<float>() != to_tensor(set, first->indices).to_vector<float>());

  CHECK(a.epoch_order(0) != a.epoch_order(1));
  CHECK(a.epoch_order(1) != a.epoch_order(2));
  options.seed = 18;
  Loader other(set, indices, options);
  CHECK(other.epoch_order(0) != a.epoch_order(0));
  std::vector<int64_t> sorted = a.epoch_order(4);
  std::sort(sorted.begin(), sorted.end());
  CHECK(sorted == indices);
}

TEST_CASE("loader: resuming from a saved State gives the batches of the uninterrupted run") {
  const ImageSet set = tiny_set(70);
  std::vector<int64_t> indices;
  for (int64_t i = 0; i < 70; i += 2) indices.push_back(i);  // 35 images, 5 batches of 8 (last 3)
  LoaderOptions options;
  options.batch_size = 8;
  options.augment = true;
  options.seed = 2024;
  options.augment_options.pad = 3;

  // The uninterrupted run: 3 epochs, with the state after every step.
  Loader full(set, indices, options);
  std::vector<Batch> run;
  std::vector<Loader::State> states;
  for (int epoch = 0; epoch < 3; ++epoch) {
    while (std::optional<Batch> b = full.next()) {
      run.push_back(std::move(*b));
      states.push_back(full.state());
    }
  }
  REQUIRE(run.size() == 15);
  CHECK(states[6] == Loader::State{1, 2});  // after batch 1 of epoch 1

  for (size_t cut : {size_t{0}, size_t{3}, size_t{6}, size_t{9}}) {
    CAPTURE(cut);
    // A first run that stops after `cut + 1` batches and saves its state...
    Loader first(set, indices, options);
    for (size_t k = 0; k <= cut; ++k) {
      std::optional<Batch> b = first.next();
      if (!b) b = first.next();  // the end-of-epoch marker between epochs
      REQUIRE(b);
      check_same_batch(*b, run[k]);
    }
    const Loader::State saved = first.state();
    CHECK(saved == states[cut]);
    // ...and a fresh loader (another object, as after a restart) that resumes there.
    Loader resumed(set, indices, options);
    resumed.set_state(saved);
    for (size_t k = cut + 1; k < run.size();) {
      std::optional<Batch> b = resumed.next();
      if (!b) continue;
      check_same_batch(*b, run[k]);
      ++k;
    }
  }

  // Resuming at the end of an epoch yields its end marker, then the next epoch.
  Loader at_end(set, indices, options);
  at_end.set_state({0, 5});
  CHECK(!at_end.next());
  CHECK(at_end.state() == Loader::State{1, 0});
  const std::optional<Batch> b = at_end.next();
  REQUIRE(b);
  check_same_batch(*b, run[5]);
  // start_epoch jumps straight to an epoch, even back to an earlier one.
  at_end.start_epoch(0);
  const std::optional<Batch> again = at_end.next();
  REQUIRE(again);
  check_same_batch(*again, run[0]);

  CHECK_THROWS_AS(at_end.set_state({0, 6}), std::invalid_argument);
  CHECK_THROWS_AS(at_end.set_state({-1, 0}), std::invalid_argument);
}

TEST_CASE("loader: no shuffle keeps the order of the indices; an empty list gives empty epochs") {
  const ImageSet set = tiny_set(30);
  const std::vector<int64_t> indices = {29, 3, 17, 17, 0, 8, 22};  // any order, repeats allowed
  LoaderOptions options;
  options.batch_size = 3;
  options.shuffle = false;
  Loader loader(set, indices, options);
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::vector<int64_t> seen;
    for (const Batch& b : one_epoch(loader)) seen.insert(seen.end(), b.indices.begin(), b.indices.end());
    CHECK(seen == indices);
  }
  Loader empty(set, {}, options);
  CHECK(empty.batches_per_epoch() == 0);
  CHECK(!empty.next());
  CHECK(!empty.next());
  CHECK(empty.state() == Loader::State{2, 0});

  options.drop_last = true;
  options.batch_size = 8;
  Loader too_small(set, indices, options);
  CHECK(too_small.batches_per_epoch() == 0);
  CHECK(!too_small.next());

  CHECK_THROWS_AS(Loader(set, {30}, options), std::out_of_range);
  options.batch_size = 0;
  CHECK_THROWS_AS(Loader(set, indices, options), std::invalid_argument);
  ImageSet broken = set;
  broken.labels.pop_back();
  CHECK_THROWS_AS(Loader(broken, indices, LoaderOptions{}), std::invalid_argument);
  broken = set;
  broken.stddev = {1.0f};
  CHECK_THROWS_AS(Loader(broken, indices, LoaderOptions{}), std::invalid_argument);
}

TEST_CASE("loader: an exception on the worker reaches next(); shutdown with a full queue") {
  const ImageSet set = tiny_set(40);
  std::vector<int64_t> indices(40);
  std::iota(indices.begin(), indices.end(), int64_t{0});
  for (int prefetch : {0, 2}) {
    CAPTURE(prefetch);
    LoaderOptions options;
    options.batch_size = 5;
    options.prefetch = prefetch;
    options.transform = [](Batch& b) {
      if (b.epoch == 0 && b.index == 2) throw std::runtime_error("transform failed on batch 2");
      b.images.mul_(2.0f);
    };
    Loader loader(set, indices, options);
    REQUIRE(loader.next());
    const std::optional<Batch> second = loader.next();
    REQUIRE(second);
    CHECK(second->images.to_vector<float>()[0] == 2.0f * to_tensor(set, {second->indices[0]}).to_vector<float>()[0]);
    CHECK_THROWS_WITH_AS(loader.next(), "transform failed on batch 2", std::runtime_error);
    CHECK_THROWS_WITH_AS(loader.next(), "transform failed on batch 2", std::runtime_error);
    CHECK(loader.state() == Loader::State{0, 2});
    loader.set_state({0, 3});  // clears the error
    const std::optional<Batch> fourth = loader.next();
    REQUIRE(fourth);
    CHECK(fourth->index == 3);
  }
  // Destroying loaders whose worker is blocked on a full queue, or never started, or
  // in the middle of an epoch, must not hang.
  for (int k = 0; k < 20; ++k) {
    LoaderOptions options;
    options.batch_size = 4;
    options.prefetch = 1 + k % 3;
    options.augment = true;
    Loader loader(set, indices, options);
    if (k % 2) loader.next();
    if (k % 4 == 1) loader.set_state({3, 1});
  }
}

// ------------------------------------------------------------------ image folders

namespace {

// A w x h RGB image (HWC) whose pixel (x, y) is fill(x, y, c).
template <class F>
std::vector<uint8_t> rgb_image(int w, int h, F fill) {
  std::vector<uint8_t> px(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) px[(static_cast<size_t>(y) * w + x) * 3 + c] = fill(x, y, c);
  return px;
}

void write_png(const fs::path& path, int w, int h, const std::vector<uint8_t>& px) {
  REQUIRE(stbi_write_png(path.c_str(), w, h, 3, px.data(), w * 3) != 0);
}

}  // namespace

TEST_CASE("image folder: classes sorted by name, files by name, resized to 32x32, CHW") {
  TempDir dir;
  fs::create_directories(dir.path / "dog");
  fs::create_directories(dir.path / "cat");
  fs::create_directories(dir.path / ".hidden");
  // cat/a.png: 40x24 of one colour; cat/b.png: 32x32 with a pattern (kept exactly);
  // dog/x.bmp: 16x16 grey level 77; dog/notes.txt is ignored.
  const uint8_t colour[3] = {10, 200, 30};
  write_png(dir.path / "cat" / "b.png", 32, 32,
            rgb_image(32, 32, [](int x, int y, int c) { return static_cast<uint8_t>(x * 7 + y * 3 + c * 50); }));
  write_png(dir.path / "cat" / "a.png", 40, 24, rgb_image(40, 24, [&](int, int, int c) { return colour[c]; }));
  const std::vector<uint8_t> grey = rgb_image(16, 16, [](int, int, int) { return uint8_t{77}; });
  REQUIRE(stbi_write_bmp((dir.path / "dog" / "x.BMP").c_str(), 16, 16, 3, grey.data()) != 0);
  write_file(dir.path / "dog" / "notes.txt", {'h', 'i'});

  const ImageSet set = load_image_folder(dir.path.string());
  CHECK(set.count == 3);
  CHECK(set.num_classes == 2);
  CHECK(set.class_names == std::vector<std::string>{"cat", "dog"});
  CHECK(set.labels == std::vector<int64_t>{0, 0, 1});
  CHECK(set.channels == 3);
  CHECK(set.height == 32);
  CHECK(set.width == 32);
  CHECK(set.pixels.size() == 3 * 3072);
  // a.png, resized: one colour stays that colour (within rounding), in CHW planes.
  for (int c = 0; c < 3; ++c) {
    for (int p : {0, 17 * 32 + 5, 1023}) CHECK(std::abs(int{set.image(0)[c * 1024 + p]} - colour[c]) <= 1);
  }
  // b.png was already 32x32: pixel (x=5, y=9) of channel 2 is exact.
  CHECK(set.image(1)[2 * 1024 + 9 * 32 + 5] == static_cast<uint8_t>(5 * 7 + 9 * 3 + 100));
  // x.BMP, grown from 16x16.
  CHECK(std::all_of(set.image(2), set.image(2) + 3072, [](uint8_t v) { return std::abs(int{v} - 77) <= 1; }));
  // Mean and std from the data, so the whole set normalises to mean 0, std 1.
  REQUIRE(set.mean.size() == 3);
  const std::vector<float> x = to_tensor(set, {0, 1, 2}).to_vector<float>();
  for (int c = 0; c < 3; ++c) {
    double sum = 0, sq = 0;
    for (int i = 0; i < 3; ++i)
      for (int p = 0; p < 1024; ++p) {
        const double v = x[i * 3072 + c * 1024 + p];
        sum += v;
        sq += v * v;
      }
    CHECK(std::abs(sum / 3072) < 1e-4);
    CHECK(std::abs(sq / 3072 - 1.0) < 1e-3);
  }

  // Another size, fixed normalisation, and an explicit class list (order and subset).
  FolderOptions options;
  options.height = 6;
  options.width = 10;
  options.stats_from_data = false;
  options.classes = {"dog", "cat"};
  const ImageSet small = load_image_folder(dir.path.string(), options);
  CHECK(small.class_names == std::vector<std::string>{"dog", "cat"});
  CHECK(small.labels == std::vector<int64_t>{0, 1, 1});
  CHECK(small.image_size() == 3 * 6 * 10);
  CHECK(small.mean == std::vector<float>(3, 0.5f));
  CHECK(small.stddev == std::vector<float>(3, 0.5f));
  CHECK(std::abs(int{small.image(1)[1 * 60 + 3 * 10 + 4]} - colour[1]) <= 1);
}

TEST_CASE("image folder: JPEGs decode; a Huffman table of more than 256 codes and non-admitted formats are refused") {
  TempDir dir;
  fs::create_directories(dir.path / "a");
  const fs::path jpeg = dir.path / "a" / "photo.jpg";
  const uint8_t colour[3] = {200, 40, 90};
  REQUIRE(stbi_write_jpg(jpeg.c_str(), 16, 16, 3,
                         rgb_image(16, 16, [&](int, int, int c) { return colour[c]; }).data(), 95) != 0);
  FolderOptions options;
  options.height = 16;
  options.width = 16;
  const ImageSet set = load_image_folder(dir.path.string(), options);
  REQUIRE(set.count == 1);
  for (int c = 0; c < 3; ++c) CHECK(std::abs(int{set.image(0)[c * 256 + 100]} - colour[c]) <= 4);

  // Raise the first code-length count of the first Huffman table so that the table
  // declares more than 256 codes: stb_image of Debian 12 would write past its arrays.
  const std::string written = polyak::testing::read_file(jpeg);
  std::vector<uint8_t> bytes(written.begin(), written.end());
  const size_t dht = written.find("\xFF\xC4");
  REQUIRE(dht != std::string::npos);
  bytes[dht + 5] = 0xFF;  // marker (2), length (2), class/id (1), then the 16 counts
  bytes[dht + 6] = 0xFF;
  write_file(jpeg, bytes);
  std::string msg = data_error([&] { load_image_folder(dir.path.string(), options); });
  CHECK(contains(msg, "photo.jpg"));
  CHECK(contains(msg, "Huffman table"));

  // Cut short: a JPEG without its end-of-image marker and a BMP with fewer pixel bytes
  // than its header promises are refused (stb_image would fill in zeros); bytes after
  // the end of a JPEG are ignored, as by every decoder.
  const std::vector<uint8_t> valid(written.begin(), written.end());
  write_file(jpeg, std::vector<uint8_t>(valid.begin(), valid.end() - 40));
  msg = data_error([&] { load_image_folder(dir.path.string(), options); });
  CHECK(contains(msg, "photo.jpg"));
  CHECK(contains(msg, "truncated JPEG"));
  std::vector<uint8_t> trailing = valid;
  trailing.insert(trailing.end(), {'j', 'u', 'n', 'k'});
  write_file(jpeg, trailing);
  CHECK(load_image_folder(dir.path.string(), options).count == 1);
  fs::remove(jpeg);
  const fs::path bmp = dir.path / "a" / "cut.bmp";
  REQUIRE(stbi_write_bmp(bmp.c_str(), 16, 16, 3, rgb_image(16, 16, [](int, int, int) { return uint8_t{9}; }).data()));
  const std::string bmp_bytes = polyak::testing::read_file(bmp);
  write_file(bmp, std::vector<uint8_t>(bmp_bytes.begin(), bmp_bytes.end() - 100));
  msg = data_error([&] { load_image_folder(dir.path.string(), options); });
  CHECK(contains(msg, "cut.bmp"));
  CHECK(contains(msg, "truncated BMP"));
  // A BMP of height 0, which stb_image decodes without complaint.
  std::vector<uint8_t> flat(bmp_bytes.begin(), bmp_bytes.end());
  std::fill(flat.begin() + 22, flat.begin() + 26, uint8_t{0});
  write_file(bmp, flat);
  msg = data_error([&] { load_image_folder(dir.path.string(), options); });
  CHECK_MESSAGE(contains(msg, "cut.bmp: it has no pixels (16 x 0)"), msg);
  fs::remove(bmp);
  // A PNG cut short, whose last chunk claims more bytes than are left.
  write_png(dir.path / "a" / "cut.png", 16, 16, rgb_image(16, 16, [](int x, int y, int) { return uint8_t(x * y); }));
  const std::string png_bytes = polyak::testing::read_file(dir.path / "a" / "cut.png");
  write_file(dir.path / "a" / "cut.png", std::vector<uint8_t>(png_bytes.begin(), png_bytes.end() - 20));
  msg = data_error([&] { load_image_folder(dir.path.string(), options); });
  CHECK_MESSAGE(contains(msg, "cut.png: truncated PNG"), msg);
  fs::remove(dir.path / "a" / "cut.png");
  // A PNG header claiming 9000 x 9000 pixels: refused before any allocation.
  std::vector<uint8_t> huge = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                               0, 0, 0x23, 0x28, 0, 0, 0x23, 0x28, 8, 2, 0, 0, 0, 0, 0, 0, 0,
                               0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
  write_file(dir.path / "a" / "huge.png", huge);
  msg = data_error([&] { load_image_folder(dir.path.string(), options); });
  CHECK_MESSAGE(contains(msg, "huge.png: 9000 x 9000 pixels, more than the 67108864 the loader accepts"), msg);
  fs::remove(dir.path / "a" / "huge.png");

  // A GIF under a .png name: stb_image sniffs the format from the bytes, and the loader
  // is built with the JPEG, PNG and BMP decoders only.
  fs::remove(jpeg);
  const std::string gif = "GIF89a\x01\x00\x01\x00\x00\x00\x00;";
  write_file(dir.path / "a" / "disguised.png", std::vector<uint8_t>(gif.begin(), gif.end()));
  msg = data_error([&] { load_image_folder(dir.path.string(), options); });
  CHECK(contains(msg, "disguised.png"));
}

TEST_CASE("image folder: a corrupt image, an empty or missing class folder name the culprit") {
  TempDir dir;
  fs::create_directories(dir.path / "a");
  fs::create_directories(dir.path / "b");
  write_png(dir.path / "a" / "ok.png", 8, 8, rgb_image(8, 8, [](int, int, int) { return uint8_t{1}; }));
  write_png(dir.path / "b" / "fine.png", 8, 8, rgb_image(8, 8, [](int, int, int) { return uint8_t{2}; }));
  write_file(dir.path / "b" / "broken.png", {0x89, 'P', 'N', 'G', 1, 2, 3, 4, 5});
  std::string msg = data_error([&] { load_image_folder(dir.path.string()); });
  CHECK(contains(msg, "broken.png"));
  CHECK(contains(msg, "decode"));
  fs::remove(dir.path / "b" / "broken.png");
  write_file(dir.path / "b" / "empty.jpg", {});
  msg = data_error([&] { load_image_folder(dir.path.string()); });
  CHECK(contains(msg, "empty.jpg"));
  fs::remove(dir.path / "b" / "empty.jpg");
  CHECK(load_image_folder(dir.path.string()).count == 2);

  fs::create_directories(dir.path / "c");
  write_file(dir.path / "c" / "readme.txt", {'x'});
  msg = data_error([&] { load_image_folder(dir.path.string()); });
  CHECK(contains(msg, (dir.path / "c").string()));
  CHECK(contains(msg, "no images"));

  FolderOptions options;
  options.classes = {"a", "zebra"};
  msg = data_error([&] { load_image_folder(dir.path.string(), options); });
  CHECK(contains(msg, (dir.path / "zebra").string()));

  msg = data_error([&] { load_image_folder((dir.path / "nowhere").string()); });
  CHECK(contains(msg, "nowhere"));
  TempDir bare;
  msg = data_error([&] { load_image_folder(bare.path.string()); });
  CHECK(contains(msg, "no class subfolders"));
}
