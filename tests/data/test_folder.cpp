// Image folders (one subfolder per class) decoded with stb_image: order, resizing,
// the formats admitted and refused, and the errors that name the culprit.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#if __has_include(<stb/stb_image_write.h>)
#include <stb/stb_image_write.h>
#else
#include <stb_image_write.h>
#endif

#include "data/error.h"
#include "data/folder.h"
#include "support/file_checks.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;
using namespace polyak;
using namespace polyak::data;
using polyak::testing::contains;
using polyak::testing::error_of;
using polyak::testing::TempDir;
using polyak::testing::write_file;

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
  std::string msg = error_of<DataError>([&] { load_image_folder(dir.path.string(), options); });
  CHECK(contains(msg, "photo.jpg"));
  CHECK(contains(msg, "Huffman table"));

  // Cut short: a JPEG without its end-of-image marker and a BMP with fewer pixel bytes
  // than its header promises are refused (stb_image would fill in zeros); bytes after
  // the end of a JPEG are ignored, as by every decoder.
  const std::vector<uint8_t> valid(written.begin(), written.end());
  write_file(jpeg, std::vector<uint8_t>(valid.begin(), valid.end() - 40));
  msg = error_of<DataError>([&] { load_image_folder(dir.path.string(), options); });
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
  msg = error_of<DataError>([&] { load_image_folder(dir.path.string(), options); });
  CHECK(contains(msg, "cut.bmp"));
  CHECK(contains(msg, "truncated BMP"));
  // A BMP of height 0, which stb_image decodes without complaint.
  std::vector<uint8_t> flat(bmp_bytes.begin(), bmp_bytes.end());
  std::fill(flat.begin() + 22, flat.begin() + 26, uint8_t{0});
  write_file(bmp, flat);
  msg = error_of<DataError>([&] { load_image_folder(dir.path.string(), options); });
  CHECK_MESSAGE(contains(msg, "cut.bmp: it has no pixels (16 x 0)"), msg);
  fs::remove(bmp);
  // A PNG cut short, whose last chunk claims more bytes than are left.
  write_png(dir.path / "a" / "cut.png", 16, 16, rgb_image(16, 16, [](int x, int y, int) { return uint8_t(x * y); }));
  const std::string png_bytes = polyak::testing::read_file(dir.path / "a" / "cut.png");
  write_file(dir.path / "a" / "cut.png", std::vector<uint8_t>(png_bytes.begin(), png_bytes.end() - 20));
  msg = error_of<DataError>([&] { load_image_folder(dir.path.string(), options); });
  CHECK_MESSAGE(contains(msg, "cut.png: truncated PNG"), msg);
  fs::remove(dir.path / "a" / "cut.png");
  // A PNG header claiming 9000 x 9000 pixels: refused before any allocation.
  std::vector<uint8_t> huge = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                               0, 0, 0x23, 0x28, 0, 0, 0x23, 0x28, 8, 2, 0, 0, 0, 0, 0, 0, 0,
                               0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
  write_file(dir.path / "a" / "huge.png", huge);
  msg = error_of<DataError>([&] { load_image_folder(dir.path.string(), options); });
  CHECK_MESSAGE(contains(msg, "huge.png: 9000 x 9000 pixels, more than the 67108864 the loader accepts"), msg);
  fs::remove(dir.path / "a" / "huge.png");

  // A GIF under a .png name: stb_image sniffs the format from the bytes, and the loader
  // is built with the JPEG, PNG and BMP decoders only.
  fs::remove(jpeg);
  const std::string gif = "GIF89a\x01\x00\x01\x00\x00\x00\x00;";
  write_file(dir.path / "a" / "disguised.png", std::vector<uint8_t>(gif.begin(), gif.end()));
  msg = error_of<DataError>([&] { load_image_folder(dir.path.string(), options); });
  CHECK(contains(msg, "disguised.png"));
}

TEST_CASE("image folder: a corrupt image, an empty or missing class folder name the culprit") {
  TempDir dir;
  fs::create_directories(dir.path / "a");
  fs::create_directories(dir.path / "b");
  write_png(dir.path / "a" / "ok.png", 8, 8, rgb_image(8, 8, [](int, int, int) { return uint8_t{1}; }));
  write_png(dir.path / "b" / "fine.png", 8, 8, rgb_image(8, 8, [](int, int, int) { return uint8_t{2}; }));
  write_file(dir.path / "b" / "broken.png", {0x89, 'P', 'N', 'G', 1, 2, 3, 4, 5});
  std::string msg = error_of<DataError>([&] { load_image_folder(dir.path.string()); });
  CHECK(contains(msg, "broken.png"));
  CHECK(contains(msg, "decode"));
  fs::remove(dir.path / "b" / "broken.png");
  write_file(dir.path / "b" / "empty.jpg", {});
  msg = error_of<DataError>([&] { load_image_folder(dir.path.string()); });
  CHECK(contains(msg, "empty.jpg"));
  fs::remove(dir.path / "b" / "empty.jpg");
  CHECK(load_image_folder(dir.path.string()).count == 2);

  fs::create_directories(dir.path / "c");
  write_file(dir.path / "c" / "readme.txt", {'x'});
  msg = error_of<DataError>([&] { load_image_folder(dir.path.string()); });
  CHECK(contains(msg, (dir.path / "c").string()));
  CHECK(contains(msg, "no images"));

  FolderOptions options;
  options.classes = {"a", "zebra"};
  msg = error_of<DataError>([&] { load_image_folder(dir.path.string(), options); });
  CHECK(contains(msg, (dir.path / "zebra").string()));

  msg = error_of<DataError>([&] { load_image_folder((dir.path / "nowhere").string()); });
  CHECK(contains(msg, "nowhere"));
  TempDir bare;
  msg = error_of<DataError>([&] { load_image_folder(bare.path.string()); });
  CHECK(contains(msg, "no class subfolders"));
}
