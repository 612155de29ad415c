// safetensors checkpoints: round trips, the exact bytes of the format, atomic writes and
// the reader's refusal of damaged files. Pure C++: nothing here needs Python.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>

#include "engine/io/safetensors.h"
#include "support/file_checks.h"
#include "support/gradcheck.h"

using namespace polyak;
using polyak::io::load_safetensors;
using polyak::io::save_safetensors;
using polyak::io::SafetensorsError;
using polyak::io::SafetensorsFile;
using polyak::testing::contains;
namespace fs = std::filesystem;

namespace {

// A fresh folder under the system temp directory, removed with its contents.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("polyak_safetensors_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::set<std::string> listing() const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(path)) names.insert(e.path().filename().string());
    return names;
  }
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

template <class T>
std::string le_bytes(std::initializer_list<T> values) {
  std::string s;
  for (T v : values) {
    char buf[sizeof(T)];
    std::memcpy(buf, &v, sizeof(T));  // the test hosts are little-endian, as the engine requires
    s.append(buf, sizeof(T));
  }
  return s;
}

// A file from a header given as JSON text, padded to 8 bytes, then `data`.
std::string raw_file(std::string header, const std::string& data) {
  header.append((8 - header.size() % 8) % 8, ' ');
  return u64_le(header.size()) + header + data;
}

// The message of the SafetensorsError that `f` throws ("" if it throws none).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const SafetensorsError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("safetensors: round trip of every dtype, 0-dim, empty and transposed tensors with metadata") {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");

  const Tensor w = Tensor::from_vector({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {3, 4});
  const Tensor wt = w.transpose(0, 1);  // a non-contiguous view, shape (4, 3)
  REQUIRE(!wt.is_contiguous());
  const Tensor rows = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2}).slice(1, 3);  // a view with an offset
  const int64_t counts[3] = {-5, 0, int64_t{1} << 40};
  const int32_t labels[4] = {7, -1, 2147483647, 0};
  const uint8_t pixels[5] = {0, 1, 127, 128, 255};
  const float scalar = 3.5f;

  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"layer1.weight", wt},
      {"layer1.bias", rows},
      {"bn.num_batches_tracked", Tensor::from_data(counts, {3})},
      {"labels", Tensor::from_data(labels, {2, 2})},
      {"pixels", Tensor::from_data(pixels, {5})},
      {"scale", Tensor::from_data(&scalar, {})},
      {"nothing", Tensor::zeros({0, 3})},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "quote \" and \xc3\xa9\n"}};
  save_safetensors(path, tensors, metadata);
  CHECK(dir.listing() == std::set<std::string>{"model.safetensors"});

  const SafetensorsFile file = load_safetensors(path);
  CHECK(file.path == path);
  CHECK(file.metadata == metadata);
  REQUIRE(file.tensors.size() == tensors.size());
  // The reference layout: descending dtype (I64, F32, I32, U8), then by name.
  std::vector<std::string> order;
  for (const auto& [name, t] : file.tensors) order.push_back(name);
  CHECK(order == std::vector<std::string>{"bn.num_batches_tracked", "layer1.bias", "layer1.weight", "nothing", "scale",
                                          "labels", "pixels"});

  const Tensor& lw = file.at("layer1.weight");
  CHECK(lw.shape() == Shape{4, 3});
  CHECK(lw.dtype() == DType::F32);
  CHECK(lw.device() == Device::CPU);
  CHECK(lw.is_contiguous());
  CHECK(lw.to_vector<float>() == wt.to_vector<float>());
  CHECK(file.at("layer1.bias").to_vector<float>() == std::vector<float>{3, 4, 5, 6});
  CHECK(file.at("bn.num_batches_tracked").to_vector<int64_t>() == std::vector<int64_t>(counts, counts + 3));
  CHECK(file.at("labels").shape() == Shape{2, 2});
  CHECK(file.at("labels").to_vector<int32_t>() == std::vector<int32_t>(labels, labels + 4));
  CHECK(file.at("pixels").to_vector<uint8_t>() == std::vector<uint8_t>(pixels, pixels + 5));
  CHECK(file.at("scale").shape() == Shape{});
  CHECK(file.at("scale").item<float>() == 3.5f);
  CHECK(file.at("nothing").shape() == Shape{0, 3});
  CHECK(file.at("nothing").numel() == 0);

  CHECK(file.contains("pixels"));
  CHECK(!file.contains("missing"));
  const std::string msg = error_of([&] { (void)file.at("missing.weight"); });
  CHECK(contains(msg, "missing.weight"));
  CHECK(contains(msg, path));

  // Every tensor's data starts aligned to its element size, the header to 8 bytes.
  const std::string bytes = read_bytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  CHECK(header_len % 8 == 0);

  // No metadata: no "__metadata__" entry at all.
  save_safetensors(path, {{"x", Tensor::ones({2})}});
  const SafetensorsFile plain = load_safetensors(path);
  CHECK(plain.metadata.empty());
  CHECK(!contains(read_bytes(path), "__metadata__"));
  // An empty list of tensors is a valid file too.
  save_safetensors(path, {});
  CHECK(read_bytes(path) == u64_le(8) + "{}      ");
  CHECK(load_safetensors(path).tensors.empty());
}

TEST_CASE("safetensors: tensors on an accelerator are saved through the host") {
  polyak::testing::for_each_accelerator([](Device device) {
    TempDir dir;
    const std::string path = dir.file("device.safetensors");
    const Tensor w = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3}, device);
    save_safetensors(path, {{"w", w.transpose(0, 1)}});
    const SafetensorsFile file = load_safetensors(path);
    CHECK(file.at("w").device() == Device::CPU);
    CHECK(file.at("w").to_vector<float>() == std::vector<float>{1, 4, 2, 5, 3, 6});
  });
}

TEST_CASE("safetensors: the bytes of a small file are the reference format") {
  TempDir dir;
  const std::string path = dir.file("a.safetensors");
  const float a[2] = {1.0f, 2.0f};
  save_safetensors(path, {{"a", Tensor::from_data(a, {2})}});
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(header.size() == 54);
  const std::string expected = u64_le(56) + header + "  " + le_bytes<float>({1.0f, 2.0f});
  CHECK(read_bytes(path) == expected);

  // Metadata first, then I64 before F32 before U8, names sorted within a dtype,
  // the data in that order; names and values escaped as JSON.
  const int64_t n[1] = {7};
  const float b[1] = {0.5f}, c[2] = {-1.0f, 4.0f};
  const uint8_t u[3] = {1, 2, 3};
  save_safetensors(path,
                   {{"u", Tensor::from_data(u, {3})},
                    {"c", Tensor::from_data(c, {1, 2})},
                    {"n", Tensor::from_data(n, {})},
                    {"b\"q", Tensor::from_data(b, {1})}},
                   {{"z", "1"}, {"format", "pt"}});
  const std::string header2 =
      R"({"__metadata__":{"format":"pt","z":"1"},)"
      R"("n":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
      R"("b\"q":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
      R"("c":{"dtype":"F32","shape":[1,2],"data_offsets":[12,20]},)"
      R"("u":{"dtype":"U8","shape":[3],"data_offsets":[20,23]}})";
  const std::string data2 = le_bytes<int64_t>({7}) + le_bytes<float>({0.5f, -1.0f, 4.0f}) + "\x01\x02\x03";
  CHECK(read_bytes(path) == raw_file(header2, data2));

  // A file written by hand in the reference layout loads.
  write_bytes(path, raw_file(header2, data2));
  const SafetensorsFile file = load_safetensors(path);
  CHECK(file.metadata == std::map<std::string, std::string>{{"format", "pt"}, {"z", "1"}});
  CHECK(file.at("b\"q").to_vector<float>() == std::vector<float>{0.5f});
  CHECK(file.at("c").to_vector<float>() == std::vector<float>{-1.0f, 4.0f});
  CHECK(file.at("n").item<int64_t>() == 7);
  CHECK(file.at("u").to_vector<uint8_t>() == std::vector<uint8_t>{1, 2, 3});
}

TEST_CASE("safetensors: a failed save keeps the existing file and leaves no temporary file") {
  TempDir dir;
  const std::string path = dir.file("ckpt.safetensors");
  const Tensor original = Tensor::from_vector({1, 2, 3}, {3});
  save_safetensors(path, {{"w", original}});
  const std::string before = read_bytes(path);

  SUBCASE("the parent directory does not exist") {
    const std::string missing = dir.file("no_such_dir/ckpt.safetensors");
    const std::string msg = error_of([&] { save_safetensors(missing, {{"w", original}}); });
    CHECK(contains(msg, missing));
    CHECK(contains(msg, std::strerror(ENOENT)));
    CHECK(dir.listing() == std::set<std::string>{"ckpt.safetensors"});
  }
  SUBCASE("the path is a directory") {
    const std::string sub = dir.file("sub");
    fs::create_directory(sub);
    write_bytes(sub + "/keep", "x");
    const std::string msg = error_of([&] { save_safetensors(sub, {{"w", original}}); });
    CHECK(contains(msg, sub));
    CHECK(contains(msg, "rename"));
    CHECK(fs::is_directory(sub));
    CHECK(read_bytes(sub + "/keep") == "x");
    CHECK(dir.listing() == std::set<std::string>{"ckpt.safetensors", "sub"});
  }
  SUBCASE("a short write (file size limit, as on a full disk)") {
    // RLIMIT_FSIZE makes write() fail with EFBIG once the file reaches the limit; it
    // works as root, where permission-based tests do not.
    struct rlimit old_limit {};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    struct rlimit small = old_limit;
    small.rlim_cur = 64 * 1024;
    auto* old_handler = ::signal(SIGXFSZ, SIG_IGN);
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    const std::string msg = error_of([&] { save_safetensors(path, {{"w", Tensor::zeros({1 << 20})}}); });
    ::setrlimit(RLIMIT_FSIZE, &old_limit);
    ::signal(SIGXFSZ, old_handler);
    CHECK(contains(msg, path));
    CHECK(contains(msg, std::strerror(EFBIG)));
    CHECK(dir.listing() == std::set<std::string>{"ckpt.safetensors"});
  }
  SUBCASE("invalid tensor lists are refused before anything is written") {
    CHECK(contains(error_of([&] { save_safetensors(path, {{"w", original}, {"w", original}}); }), "appears twice"));
    CHECK(contains(error_of([&] { save_safetensors(path, {{"__metadata__", original}}); }), "reserved"));
    CHECK(contains(error_of([&] { save_safetensors(path, {{"u", Tensor()}}); }), "undefined"));
    CHECK(contains(error_of([&] { save_safetensors(path, {{"bad\xff", original}}); }), "UTF-8"));
    CHECK(contains(error_of([&] { save_safetensors(path, {{"w", original}}, {{"k", "\xc3"}}); }), "UTF-8"));
    CHECK(dir.listing() == std::set<std::string>{"ckpt.safetensors"});
  }
  CHECK(read_bytes(path) == before);
  CHECK(load_safetensors(path).at("w").to_vector<float>() == std::vector<float>{1, 2, 3});

  // A successful save replaces the file and leaves nothing else behind.
  save_safetensors(path, {{"v", Tensor::ones({2})}});
  CHECK(!load_safetensors(path).contains("w"));
  CHECK(load_safetensors(path).at("v").to_vector<float>() == std::vector<float>{1, 1});
  CHECK(dir.listing().count("ckpt.safetensors") == 1);
  for (const std::string& name : dir.listing()) CHECK(!contains(name, ".tmp."));
}

TEST_CASE("safetensors: malformed files are refused with a message naming the file") {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  const std::string a8 = le_bytes<float>({1.0f, 2.0f});
  const std::string good = raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", a8);

  // Writes `bytes` and expects the load to fail with `what` in the message.
  auto refused = [&](const std::string& bytes, const std::string& what) {
    write_bytes(path, bytes);
    const std::string msg = error_of([&] { (void)load_safetensors(path); });
    INFO("message: ", msg);
    CHECK(contains(msg, path));
    CHECK(contains(msg, what));
  };
  auto header = [&](const std::string& json, const std::string& data, const std::string& what) {
    refused(raw_file(json, data), what);
  };

  write_bytes(path, good);
  CHECK(load_safetensors(path).at("a").to_vector<float>() == std::vector<float>{1, 2});

  SUBCASE("missing, not a file, too short") {
    CHECK(contains(error_of([&] { (void)load_safetensors(dir.file("absent")); }), std::strerror(ENOENT)));
    CHECK(contains(error_of([&] { (void)load_safetensors(dir.path.string()); }), "not a regular file"));
    refused("", "too short");
    refused("\x08\x00\x00", "too short");
  }
  SUBCASE("truncated files") {
    refused(good.substr(0, good.size() - 4), "past the end");  // data cut short
    refused(good.substr(0, 20), "runs past the end");          // header cut short
  }
  SUBCASE("corrupt header length") {
    refused(u64_le(uint64_t{1} << 40) + good.substr(8), "exceeds the limit");
    refused(u64_le(~uint64_t{0}) + good.substr(8), "exceeds the limit");
    refused(u64_le(good.size()) + good.substr(8), "runs past the end");
    refused(u64_le(0) + good.substr(8), "does not start with '{'");
  }
  SUBCASE("bad JSON") {
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", a8, "not valid JSON");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} x)", a8, "not valid JSON");
    header("{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", a8, "not valid JSON");
    header(R"([{"a":1}])", "", "does not start with '{'");
  }
  SUBCASE("unsupported or unknown dtype") {
    header(R"({"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", a8, "\"F8_E4M3\"");
    // F16 is read, and its byte count checked as 2 per element.
    header(R"({"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}})", a8, "F16 of shape [3], 6 bytes");
    header(R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}})", a8, "does not support");
    header(R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", a8, "\"F64\"");
    header(R"({"a":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", a8, "\"f32\"");
  }
  SUBCASE("wrong types and missing fields") {
    header(R"({"a":[1,2]})", a8, "must be an object");
    header(R"({"a":7})", a8, "must be an object");
    header(R"({"a":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", a8, "\"dtype\" of tensor \"a\" must be a string");
    header(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", a8, "must be an array of integers");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":"0-8"}})", a8, "must be an array of integers");
    header(R"({"a":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", a8, "must hold non-negative integers");
    header(R"({"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", a8, "must hold non-negative integers");
    header(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", a8, "has no \"dtype\"");
    header(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", a8, "has no \"shape\"");
    header(R"({"a":{"dtype":"F32","shape":[2]}})", a8, "has no \"data_offsets\"");
    header(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", a8, "twice");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
           a8, "appears twice");
  }
  SUBCASE("bad shapes") {
    header(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", a8, "negative number -2");
    header(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", a8, "non-integer 2.0");
    header(R"({"a":{"dtype":"F32","shape":[1e1],"data_offsets":[0,8]}})", a8, "non-integer");
    header(R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", a8, "too large");
    header(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})", "", "overflows");
    header(R"({"a":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})", "", "overflows");
    header(R"({"a":{"dtype":"F32","shape":[2305843009213693952,2],"data_offsets":[0,8]}})", a8, "byte size overflows");
    std::string many = "[";
    for (int i = 0; i < 65; ++i) many += i ? ",1" : "1";
    header(R"({"a":{"dtype":"U8","shape":)" + many + R"(],"data_offsets":[0,1]}})", "x", "more than 64 dimensions");
  }
  SUBCASE("bad data offsets") {
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", a8, "past the end of the 8-byte data");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", a8, "begin after end");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", a8, "must be [begin, end]");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", a8, "must be [begin, end]");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", a8, "negative");
    header(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", a8, "12 bytes, but its data_offsets [0, 8] span 8");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
           a8 + "abcd", "overlaps tensor \"a\"");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
           a8, "overlaps");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
           a8 + a8 + "abcd", "belong to no tensor");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", "abcd" + a8, "bytes [0, 4)");
    header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", a8 + "extra!", "trailing bytes");
  }
  SUBCASE("bad metadata") {
    header(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", a8,
           "value of key \"k\" must be a string, got the number 1");
    header(R"({"__metadata__":{"k":{"x":"y"}},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", a8,
           "must be a string, got an object");
    header(R"({"__metadata__":["k"],"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", a8,
           "\"__metadata__\" must be an object of strings");
    header(R"({"__metadata__":"k","a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", a8,
           "\"__metadata__\" must be an object of strings");
  }
  SUBCASE("accepted variations: null metadata, unknown fields, deep unknown values, key order") {
    std::string deep(100000, '[');
    deep += std::string(100000, ']');
    write_bytes(path, raw_file(R"({"__metadata__":null,"a":{"data_offsets":[0,8],"extra":{"x":[1,[2,{"y":null}]]},)"
                               R"("more":)" + deep + R"(,"shape":[2],"dtype":"F32"}})",
                               a8));
    const SafetensorsFile file = load_safetensors(path);
    CHECK(file.metadata.empty());
    CHECK(file.at("a").to_vector<float>() == std::vector<float>{1, 2});
    // Unpadded headers are valid too; only the writer pads.
    write_bytes(path, u64_le(54) + R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})" + a8);
    CHECK(load_safetensors(path).at("a").to_vector<float>() == std::vector<float>{1, 2});
  }
}
