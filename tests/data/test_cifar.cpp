// CIFAR binary readers: the real CIFAR-10 files (when the data folder is there), small
// synthetic files written to a temporary folder (plain, gzip, official archive layout,
// CIFAR-100), and every kind of broken input, whose error must name the file.
#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/cifar.h"
#include "support/gradcheck.h"
#include "support/file_checks.h"
#include "support/temp_dir.h"

namespace fs = std::filesystem;
using namespace polyak;
using namespace polyak::data;
using polyak::testing::contains;
using polyak::testing::error_of;
using polyak::testing::write_file;
using polyak::testing::TempDir;

namespace {

uint8_t synthetic_pixel(int record, int byte) { return static_cast<uint8_t>((record * 37 + byte * 13 + byte / 97) & 255); }

// `count` records with `label_bytes` label bytes each; pixels follow a pattern that
// depends on the record and the byte.
std::vector<uint8_t> synthetic_records(int count, int label_bytes, const std::vector<std::vector<uint8_t>>& labels) {
  std::vector<uint8_t> bytes;
  for (int r = 0; r < count; ++r) {
    for (int k = 0; k < label_bytes; ++k) bytes.push_back(labels[r][k]);
    for (int j = 0; j < 3072; ++j) bytes.push_back(synthetic_pixel(r, j));
  }
  return bytes;
}

std::vector<uint8_t> cifar10_records(int count) {
  std::vector<std::vector<uint8_t>> labels;
  for (int r = 0; r < count; ++r) labels.push_back({static_cast<uint8_t>((r * 3) % 10)});
  return synthetic_records(count, 1, labels);
}

std::vector<uint8_t> cifar100_records(int count) {
  std::vector<std::vector<uint8_t>> labels;
  for (int r = 0; r < count; ++r) labels.push_back({static_cast<uint8_t>(r % 20), static_cast<uint8_t>((r * 7) % 100)});
  return synthetic_records(count, 2, labels);
}

void write_gz(const fs::path& path, const std::vector<uint8_t>& bytes) {
  gzFile file = gzopen(path.c_str(), "wb6");
  REQUIRE(file != nullptr);
  REQUIRE(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  REQUIRE(gzclose(file) == Z_OK);
}

std::vector<uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

// All 5 train batches with `count` synthetic records each, the test batch with `count`.
void write_cifar10_dir(const fs::path& dir, int count, bool gz) {
  const std::vector<uint8_t> records = cifar10_records(count);
  for (const char* name : {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                           "data_batch_5.bin", "test_batch.bin"}) {
    if (gz) {
      write_gz(dir / (std::string(name) + ".gz"), records);
    } else {
      write_file(dir / name, records);
    }
  }
}

void check_synthetic_cifar10(const ImageSet& set, int count) {
  REQUIRE(set.count == count);
  REQUIRE(set.labels.size() == static_cast<size_t>(count));
  REQUIRE(set.pixels.size() == static_cast<size_t>(count) * 3072);
  for (int r = 0; r < count; ++r) {
    CHECK(set.labels[r] == (r * 3) % 10);
    for (int j : {0, 1, 1023, 1024, 2047, 2048, 3071}) CHECK(set.image(r)[j] == synthetic_pixel(r, j));
  }
  CHECK(set.num_classes == 10);
  CHECK(set.class_names == cifar10_class_names());
  CHECK(set.mean == kCifar10Mean);
  CHECK(set.stddev == kCifar10Std);
}

}  // namespace

// ------------------------------------------------------------------ real data

TEST_CASE("cifar10 real test split: 10000 images, first is a cat, 1000 per class") {
  const std::string file = testing::real_data_path("cifar10/test_batch.bin.gz");
  if (file.empty()) return;
  const std::string dir = fs::path(file).parent_path().string();
  const ImageSet set = load_cifar10(dir, CifarSplit::Test);
  REQUIRE(set.count == 10000);
  CHECK(set.channels == 3);
  CHECK(set.height == 32);
  CHECK(set.width == 32);
  REQUIRE(set.pixels.size() == size_t{10000} * 3072);
  CHECK(set.labels[0] == 3);
  CHECK(set.num_classes == 10);
  REQUIRE(set.class_names.size() == 10);
  CHECK(set.class_names[3] == "cat");
  CHECK(set.class_names == cifar10_class_names());  // batches.meta.txt agrees with the built-in list
  std::vector<int> per_class(10, 0);
  for (int64_t label : set.labels) {
    REQUIRE(label >= 0);
    REQUIRE(label < 10);
    ++per_class[label];
  }
  for (int c = 0; c < 10; ++c) CHECK(per_class[c] == 1000);
}

TEST_CASE("cifar10 real train split: 50000 images, first is a frog with the known first row") {
  const std::string file = testing::real_data_path("cifar10/data_batch_1.bin.gz");
  if (file.empty()) return;
  const std::string dir = fs::path(file).parent_path().string();
  const auto start = std::chrono::steady_clock::now();
  const ImageSet set = load_cifar10(dir, CifarSplit::Train);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MESSAGE("loaded 50000 gzip-compressed CIFAR-10 train images in " << seconds << " s");
  REQUIRE(set.count == 50000);
  REQUIRE(set.pixels.size() == size_t{50000} * 3072);
  CHECK(set.labels[0] == 6);
  CHECK(set.class_names[6] == "frog");
  const std::vector<int> first_row = {59, 43, 50, 68, 98};
  for (int x = 0; x < 5; ++x) CHECK(static_cast<int>(set.image(0)[x]) == first_row[x]);
  std::vector<int> per_class(10, 0);
  for (int64_t label : set.labels) ++per_class[label];
  for (int c = 0; c < 10; ++c) CHECK(per_class[c] == 5000);

  SUBCASE("to_tensor applies (x/255 - mean)/std per channel") {
    const std::vector<int64_t> indices = {0, 49999, 12345};
    const Tensor x = to_tensor(set, indices, Device::CPU);
    REQUIRE(x.shape() == Shape{3, 3, 32, 32});
    CHECK(x.dtype() == DType::F32);
    const std::vector<float> v = x.to_vector<float>();
    for (size_t b = 0; b < indices.size(); ++b) {
      for (int c = 0; c < 3; ++c) {
        for (int p : {0, 1, 517, 1023}) {
          const uint8_t raw = set.image(indices[b])[c * 1024 + p];
          const float expected = (static_cast<float>(raw) / 255.0f - kCifar10Mean[c]) / kCifar10Std[c];
          CHECK(v[b * 3072 + c * 1024 + p] == doctest::Approx(expected).epsilon(1e-6));
        }
      }
    }
    // The very first value: R pixel 59 of the frog.
    CHECK(v[0] == doctest::Approx((59.0 / 255.0 - 0.4914) / 0.2470).epsilon(1e-5));
    const Tensor y = labels_tensor(set, indices, Device::CPU);
    CHECK(y.dtype() == DType::I64);
    CHECK(y.to_vector<int64_t>() == std::vector<int64_t>{set.labels[0], set.labels[49999], set.labels[12345]});
  }
}

TEST_CASE("cifar100 built-in class names match the label-name files in the data folder") {
  const std::string fine = testing::real_data_path("cifar100/fine_label_names.txt.gz");
  if (fine.empty()) return;
  const fs::path dir = fs::path(fine).parent_path();
  // Put the real name files next to a synthetic test.bin: the loader reads them.
  TempDir tmp;
  fs::copy_file(fine, tmp.path / "fine_label_names.txt.gz");
  fs::copy_file(dir / "coarse_label_names.txt.gz", tmp.path / "coarse_label_names.txt.gz");
  write_file(tmp.path / "test.bin", cifar100_records(3));
  const ImageSet f = load_cifar100(tmp.str(), CifarSplit::Test, CifarLabel::Fine);
  CHECK(f.class_names == cifar100_fine_class_names());
  const ImageSet c = load_cifar100(tmp.str(), CifarSplit::Test, CifarLabel::Coarse);
  CHECK(c.class_names == cifar100_coarse_class_names());
}

// ------------------------------------------------------------------ synthetic files

TEST_CASE("cifar10 plain .bin files in a temp folder") {
  TempDir tmp;
  write_cifar10_dir(tmp.path, 4, false);
  const ImageSet test = load_cifar10(tmp.str(), CifarSplit::Test);
  check_synthetic_cifar10(test, 4);
  const ImageSet train = load_cifar10(tmp.str(), CifarSplit::Train);
  REQUIRE(train.count == 20);
  for (int b = 0; b < 5; ++b) {
    for (int r = 0; r < 4; ++r) {
      CHECK(train.labels[b * 4 + r] == (r * 3) % 10);
      CHECK(train.image(b * 4 + r)[2048] == synthetic_pixel(r, 2048));
    }
  }
}

TEST_CASE("cifar10 gzip files written with gzwrite") {
  TempDir tmp;
  write_cifar10_dir(tmp.path, 5, true);
  check_synthetic_cifar10(load_cifar10(tmp.str(), CifarSplit::Test), 5);
  CHECK(load_cifar10(tmp.str(), CifarSplit::Train).count == 25);
}

TEST_CASE("cifar10 official archive layout, class names file, and plain preferred over .gz") {
  TempDir tmp;
  const fs::path inner = tmp.path / "cifar-10-batches-bin";
  fs::create_directories(inner);
  write_file(inner / "test_batch.bin", cifar10_records(3));
  // A different .gz beside it must be ignored: the plain file wins.
  write_gz(inner / "test_batch.bin.gz", cifar10_records(7));
  const std::string names = "a0\nb1\r\nc2\nd3\ne4\nf5\ng6\nh7\ni8\nj9\n\n";
  write_gz(inner / "batches.meta.txt.gz", std::vector<uint8_t>(names.begin(), names.end()));

  const ImageSet from_parent = load_cifar10(tmp.str(), CifarSplit::Test);
  CHECK(from_parent.count == 3);
  CHECK(from_parent.class_names == std::vector<std::string>{"a0", "b1", "c2", "d3", "e4", "f5", "g6", "h7", "i8", "j9"});
  const ImageSet from_inner = load_cifar10(inner.string(), CifarSplit::Test);
  CHECK(from_inner.count == 3);
  CHECK(from_inner.pixels == from_parent.pixels);

  fs::remove(inner / "test_batch.bin");
  CHECK(load_cifar10(tmp.str(), CifarSplit::Test).count == 7);
}

TEST_CASE("cifar100 plain and gzip files, fine and coarse labels") {
  TempDir tmp;
  const fs::path inner = tmp.path / "cifar-100-binary";
  fs::create_directories(inner);
  write_file(inner / "test.bin", cifar100_records(6));
  write_gz(inner / "train.bin.gz", cifar100_records(9));

  const ImageSet fine = load_cifar100(tmp.str(), CifarSplit::Test);
  REQUIRE(fine.count == 6);
  CHECK(fine.num_classes == 100);
  CHECK(fine.class_names == cifar100_fine_class_names());
  CHECK(fine.mean == kCifar100Mean);
  CHECK(fine.stddev == kCifar100Std);
  for (int r = 0; r < 6; ++r) {
    CHECK(fine.labels[r] == (r * 7) % 100);
    for (int j : {0, 1024, 3071}) CHECK(fine.image(r)[j] == synthetic_pixel(r, j));
  }
  const ImageSet coarse = load_cifar100(inner.string(), CifarSplit::Train, CifarLabel::Coarse);
  REQUIRE(coarse.count == 9);
  CHECK(coarse.num_classes == 20);
  CHECK(coarse.class_names.size() == 20);
  for (int r = 0; r < 9; ++r) CHECK(coarse.labels[r] == r % 20);
  CHECK(coarse.image(8)[3071] == synthetic_pixel(8, 3071));

  const Tensor x = to_tensor(coarse, {8}, Device::CPU);
  const float expected = (static_cast<float>(synthetic_pixel(8, 2048 + 5)) / 255.0f - kCifar100Mean[2]) / kCifar100Std[2];
  CHECK(x.to_vector<float>()[2048 + 5] == doctest::Approx(expected).epsilon(1e-6));
}

TEST_CASE("subset, to_tensor and labels_tensor pick the requested images") {
  TempDir tmp;
  write_file(tmp.path / "test_batch.bin", cifar10_records(5));
  const ImageSet set = load_cifar10(tmp.str(), CifarSplit::Test);
  const ImageSet sub = subset(set, {4, 1, 1});
  REQUIRE(sub.count == 3);
  CHECK(sub.labels == std::vector<int64_t>{set.labels[4], set.labels[1], set.labels[1]});
  CHECK(std::equal(sub.image(0), sub.image(0) + 3072, set.image(4)));
  CHECK(std::equal(sub.image(2), sub.image(2) + 3072, set.image(1)));
  CHECK(sub.class_names == set.class_names);
  CHECK(sub.mean == set.mean);

  const std::vector<float> a = to_tensor(sub, iota(3), Device::CPU).to_vector<float>();
  const std::vector<float> b = to_tensor(set, {4, 1, 1}, Device::CPU).to_vector<float>();
  CHECK(a == b);
  CHECK(labels_tensor(sub, iota(3), Device::CPU).to_vector<int64_t>() == sub.labels);
  CHECK(to_tensor(set, {}, Device::CPU).shape() == Shape{0, 3, 32, 32});
  CHECK_THROWS_AS(subset(set, {5}), std::out_of_range);
  CHECK_THROWS_AS(to_tensor(set, {-1}, Device::CPU), std::out_of_range);
  CHECK_THROWS_AS(labels_tensor(set, {0, 9}, Device::CPU), std::out_of_range);
}

// ------------------------------------------------------------------ broken input

TEST_CASE("cifar10 file whose size is not a multiple of 3073 bytes") {
  TempDir tmp;
  std::vector<uint8_t> bytes = cifar10_records(3);
  bytes.resize(bytes.size() - 100);
  write_file(tmp.path / "test_batch.bin", bytes);
  const std::string msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Test); });
  CHECK(contains(msg, (tmp.path / "test_batch.bin").string()));
  CHECK(contains(msg, "size " + std::to_string(bytes.size()) + " bytes"));
  CHECK(contains(msg, "record size 3073"));
  CHECK(contains(msg, "truncated"));
}

TEST_CASE("cifar100 file whose size is not a multiple of 3074 bytes") {
  TempDir tmp;
  write_file(tmp.path / "test.bin", cifar10_records(4));  // 3073-byte records
  const std::string msg = error_of<DataError>([&] { load_cifar100(tmp.str(), CifarSplit::Test); });
  CHECK(contains(msg, "test.bin"));
  CHECK(contains(msg, "record size 3074"));
}

TEST_CASE("cifar10 label 10 names the record") {
  TempDir tmp;
  std::vector<uint8_t> bytes = cifar10_records(4);
  bytes[2 * 3073] = 10;
  write_file(tmp.path / "test_batch.bin", bytes);
  const std::string msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Test); });
  CHECK(contains(msg, "test_batch.bin"));
  CHECK(contains(msg, "record 2"));
  CHECK(contains(msg, "label 10"));
  CHECK(contains(msg, "0..9"));
}

TEST_CASE("cifar100 fine label 100 and coarse label 20 name the record") {
  TempDir tmp;
  std::vector<uint8_t> bytes = cifar100_records(4);
  bytes[3 * 3074 + 1] = 100;
  write_file(tmp.path / "test.bin", bytes);
  std::string msg = error_of<DataError>([&] { load_cifar100(tmp.str(), CifarSplit::Test); });
  CHECK(contains(msg, "record 3"));
  CHECK(contains(msg, "fine label 100"));
  bytes = cifar100_records(4);
  bytes[1 * 3074] = 20;
  write_file(tmp.path / "test.bin", bytes);
  msg = error_of<DataError>([&] { load_cifar100(tmp.str(), CifarSplit::Test, CifarLabel::Fine); });
  CHECK(contains(msg, "record 1"));
  CHECK(contains(msg, "coarse label 20"));
}

TEST_CASE("truncated and corrupt gzip files name the file") {
  TempDir tmp;
  const fs::path gz = tmp.path / "test_batch.bin.gz";
  write_gz(gz, cifar10_records(20));
  const std::vector<uint8_t> whole = read_bytes(gz);
  REQUIRE(whole.size() > 100);

  SUBCASE("cut in half") {
    write_file(gz, std::vector<uint8_t>(whole.begin(), whole.begin() + whole.size() / 2));
    const std::string msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Test); });
    CHECK(contains(msg, gz.string()));
    CHECK(contains(msg, "truncated"));
  }
  SUBCASE("last bytes of the trailer missing") {
    write_file(gz, std::vector<uint8_t>(whole.begin(), whole.end() - 3));
    const std::string msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Test); });
    CHECK(contains(msg, gz.string()));
    CHECK(contains(msg, "truncated"));
  }
  SUBCASE("bytes flipped in the middle") {
    std::vector<uint8_t> bad = whole;
    for (size_t i = bad.size() / 3; i < bad.size() / 3 + 16; ++i) bad[i] ^= 0x5a;
    write_file(gz, bad);
    const std::string msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Test); });
    CHECK(contains(msg, gz.string()));
    CHECK(contains(msg, "corrupt"));
  }
  SUBCASE("not gzip at all") {
    write_file(gz, cifar10_records(1));
    const std::string msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Test); });
    CHECK(contains(msg, gz.string()));
    CHECK(contains(msg, "not a gzip file"));
  }
  SUBCASE("uncompressed size not a multiple of the record size") {
    std::vector<uint8_t> bytes = cifar10_records(2);
    bytes.push_back(1);
    write_gz(gz, bytes);
    const std::string msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Test); });
    CHECK(contains(msg, gz.string()));
    CHECK(contains(msg, "uncompressed size 6147 bytes"));
  }
  SUBCASE("two concatenated gzip members read as one file") {
    std::vector<uint8_t> twice = whole;
    twice.insert(twice.end(), whole.begin(), whole.end());
    write_file(gz, twice);
    CHECK(load_cifar10(tmp.str(), CifarSplit::Test).count == 40);
  }
}

TEST_CASE("empty files are rejected") {
  TempDir tmp;
  write_file(tmp.path / "test_batch.bin", {});
  std::string msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Test); });
  CHECK(contains(msg, "test_batch.bin"));
  CHECK(contains(msg, "empty"));
  fs::remove(tmp.path / "test_batch.bin");
  write_file(tmp.path / "test_batch.bin.gz", {});
  msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Test); });
  CHECK(contains(msg, "test_batch.bin.gz"));
  CHECK(contains(msg, "empty"));
  fs::remove(tmp.path / "test_batch.bin.gz");
  write_gz(tmp.path / "test_batch.bin.gz", {});
  msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Test); });
  CHECK(contains(msg, "test_batch.bin.gz"));
  CHECK(contains(msg, "empty"));
}

TEST_CASE("missing folder or file says where it looked and how to get the data") {
  TempDir tmp;
  const fs::path missing = tmp.path / "no_such_folder";
  std::string msg = error_of<DataError>([&] { load_cifar10(missing.string(), CifarSplit::Train); });
  CHECK(contains(msg, "data_batch_1.bin"));
  CHECK(contains(msg, "does not exist"));
  CHECK(contains(msg, (missing / "data_batch_1.bin.gz").string()));
  CHECK(contains(msg, (missing / "cifar-10-batches-bin" / "data_batch_1.bin").string()));
  CHECK(contains(msg, "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"));
  CHECK(contains(msg, "--data"));

  // Four of five train batches: the error names the missing one.
  write_cifar10_dir(tmp.path, 1, false);
  fs::remove(tmp.path / "data_batch_4.bin");
  msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Train); });
  CHECK(contains(msg, "data_batch_4.bin"));
  CHECK_FALSE(contains(msg, "does not exist"));

  msg = error_of<DataError>([&] { load_cifar100(missing.string(), CifarSplit::Test); });
  CHECK(contains(msg, "test.bin"));
  CHECK(contains(msg, "cifar-100-binary"));
  CHECK(contains(msg, "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"));
}

TEST_CASE("a class-name file with the wrong number of names is an error") {
  TempDir tmp;
  write_file(tmp.path / "test_batch.bin", cifar10_records(1));
  const std::string names = "cat\ndog\n";
  write_file(tmp.path / "batches.meta.txt", std::vector<uint8_t>(names.begin(), names.end()));
  const std::string msg = error_of<DataError>([&] { load_cifar10(tmp.str(), CifarSplit::Test); });
  CHECK(contains(msg, "batches.meta.txt"));
  CHECK(contains(msg, "expected 10 class names"));
  CHECK(contains(msg, "found 2"));
}
