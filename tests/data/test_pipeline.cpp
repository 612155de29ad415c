// The training data pipeline: crop + flip augmentation and the prefetching batch loader
// (coverage, determinism, resume). Label files, noise and the split are in
// test_labels.cpp, image folders in test_folder.cpp.
#include <doctest/doctest.h>

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

#include "data/augment.h"
#include "data/cifar.h"
#include "data/loader.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;
using namespace polyak;
using namespace polyak::data;
using polyak::testing::TempDir;

namespace {

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

TEST_CASE("crop_flip with reflect padding: the window of the mirrored image, as F.pad(..., 'reflect')") {
  // One 3x4 channel: rows 0 1 2 3 / 10 11 12 13 / 20 21 22 23.
  const int H = 3, W = 4, pad = 2;
  std::vector<uint8_t> img(H * W), out(H * W);
  for (int y = 0; y < H; ++y)
    for (int x = 0; x < W; ++x) img[y * W + x] = static_cast<uint8_t>(10 * y + x);
  // dy = dx = 0: the window starts 2 rows and 2 columns before the image; row -2 is row 2,
  // row -1 is row 1 (the edge row is not repeated), and so for columns.
  crop_flip(img.data(), 1, H, W, pad, {0, 0, false}, out.data(), true);
  CHECK(out == std::vector<uint8_t>{22, 21, 20, 21,  //
                                    12, 11, 10, 11,  //
                                    2, 1, 0, 1});
  // dy = dx = 4: 2 rows and columns after it; row 3 is row 1, row 4 is row 0.
  crop_flip(img.data(), 1, H, W, pad, {4, 4, false}, out.data(), true);
  CHECK(out == std::vector<uint8_t>{22, 23, 22, 21,  //
                                    12, 13, 12, 11,  //
                                    2, 3, 2, 1});
  // Flipped after the crop: each row of the window read right to left.
  crop_flip(img.data(), 1, H, W, pad, {4, 4, true}, out.data(), true);
  CHECK(out == std::vector<uint8_t>{21, 22, 23, 22,  //
                                    11, 12, 13, 12,  //
                                    1, 2, 3, 2});
  // No shift: the image itself.
  crop_flip(img.data(), 1, H, W, pad, {pad, pad, false}, out.data(), true);
  CHECK(out == img);
  CHECK_THROWS_AS(crop_flip(img.data(), 1, H, W, 3, {0, 0, false}, out.data(), true), std::invalid_argument);
}

TEST_CASE("alternating flips: a fixed coin per image, every image the other way in odd epochs") {
  const int n = 4000;
  int flipped = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool first = alternating_flip(99, i, 0);
    flipped += first;
    CHECK(alternating_flip(99, i, 1) != first);
    CHECK(alternating_flip(99, i, 2) == first);
    CHECK(alternating_flip(99, i, 7) != first);
  }
  CHECK(std::abs(flipped - n / 2) < 200);  // 6.3 standard deviations
  int same = 0;  // another seed tosses other coins
  for (int64_t i = 0; i < n; ++i) same += alternating_flip(99, i, 0) == alternating_flip(100, i, 0);
  CHECK(std::abs(same - n / 2) < 200);
  // The flip is not drawn from the batch's Rng: only the offsets are.
  AugmentOptions options{true, 2, true};
  options.alternate_flip = true;
  Rng rng(5), replay(5);
  (void)draw_crop_flip(options, rng);
  (void)replay.below(5);
  (void)replay.below(5);
  CHECK(rng.state() == replay.state());
}

TEST_CASE("loader with alternate_flip: each image mirrored in exactly one of two consecutive epochs") {
  const ImageSet set = tiny_set(40);
  std::vector<int64_t> indices(40);
  std::iota(indices.begin(), indices.end(), int64_t{0});
  LoaderOptions options;
  options.batch_size = 8;
  options.seed = 4;
  options.augment = true;
  options.augment_options = {false, 0, true};  // flips only
  options.augment_options.alternate_flip = true;
  Loader loader(set, indices, options);
  std::map<int64_t, std::vector<float>> epoch0;
  const auto images_of = [&](const Batch& b, size_t i) {
    const std::vector<float> all = b.images.to_vector<float>();
    const auto first = all.begin() + static_cast<int64_t>(i) * set.image_size();
    return std::vector<float>(first, first + set.image_size());
  };
  while (auto b = loader.next())
    for (size_t i = 0; i < b->indices.size(); ++i) epoch0[b->indices[i]] = images_of(*b, i);
  const Normalizer norm(set);
  int mirrored = 0;
  while (auto b = loader.next())
    for (size_t i = 0; i < b->indices.size(); ++i) {
      const int64_t index = b->indices[i];
      CHECK(images_of(*b, i) != epoch0[index]);  // the other way round (no image is symmetric)
      std::vector<float> plain(set.image_size());
      write_batch(set, {index}, norm, nullptr, nullptr, plain.data());
      mirrored += images_of(*b, i) != plain;
    }
  CHECK(mirrored > 5);
  CHECK(mirrored < 35);
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
