// CIFAR binary readers: find the files, read each one whole (inflating .gz in memory),
// check every record, and split records into uint8 CHW pixels and int64 labels.
//
// Speed: each file is read with one fread, or one read of the compressed bytes and one
// inflate call into a buffer sized from the gzip trailer; the files of a split are read
// on parallel threads. Splitting records is a memcpy per image.
#include "data/cifar.h"

#include "data/normalize.h"
#include "engine/parallel.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <thread>

namespace polyak::data {
namespace {

namespace fs = std::filesystem;

constexpr int kImageBytes = 3 * 32 * 32;
const char* const kCifar10Url = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
const char* const kCifar100Url = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz";

// What one dataset's files look like on disk.
struct Layout {
  const char* dataset;     // "CIFAR-10"
  const char* subfolder;   // the folder the official archive extracts to
  const char* url;
  const char* archive;     // file name of the archive
  int label_bytes;         // 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine)
  std::array<int, 2> label_limits;  // labels must be < these
  std::array<const char*, 2> label_kinds;  // "label" or "coarse label", "fine label"
};

const Layout kCifar10Layout = {"CIFAR-10", "cifar-10-batches-bin", kCifar10Url, "cifar-10-binary.tar.gz",
                               1, {10, 0}, {"label", ""}};
const Layout kCifar100Layout = {"CIFAR-100", "cifar-100-binary", kCifar100Url, "cifar-100-binary.tar.gz",
                                2, {20, 100}, {"coarse label", "fine label"}};

std::string size_str(uint64_t bytes) { return std::to_string(bytes) + (bytes == 1 ? " byte" : " bytes"); }

// The folders to look in: the one given, then the archive's folder inside it.
std::vector<fs::path> candidate_dirs(const std::string& dir, const Layout& layout) {
  const fs::path root = dir.empty() ? fs::path(".") : fs::path(dir);
  return {root, root / layout.subfolder};
}

// NAME or NAME.gz in the first candidate folder that holds either (plain first);
// every path tried is appended to `looked`.
std::optional<fs::path> find_file(const std::vector<fs::path>& dirs, const std::string& name,
                                  std::vector<std::string>* looked = nullptr) {
  for (const fs::path& d : dirs) {
    for (const fs::path& p : {d / name, d / (name + ".gz")}) {
      if (looked) looked->push_back(p.string());
      std::error_code ec;
      if (fs::is_regular_file(p, ec)) return p;
    }
  }
  return std::nullopt;
}

[[noreturn]] void throw_missing(const std::string& dir, const Layout& layout, const std::string& name,
                                const std::vector<std::string>& looked) {
  std::string msg = std::string(layout.dataset) + ": cannot find " + name;
  std::error_code ec;
  if (!fs::is_directory(dir.empty() ? fs::path(".") : fs::path(dir), ec)) {
    msg += " (the data folder '" + dir + "' does not exist)";
  }
  msg += "; looked at:";
  for (const std::string& p : looked) msg += "\n  " + p;
  msg += "\nGet the binary version of " + std::string(layout.dataset) + " from " + layout.url +
         ", extract it (tar xzf " + layout.archive + ") and pass the extracted folder " + layout.subfolder +
         "/ (or the folder that holds it) with --data.";
  throw DataError(msg);
}

bool is_gz(const fs::path& path) { return path.extension() == ".gz"; }

std::vector<uint8_t> read_plain(const fs::path& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) throw DataError("cannot read " + path.string() + ": " + ec.message());
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw DataError("cannot open " + path.string() + ": " + std::strerror(errno));
  std::vector<uint8_t> bytes(size);
  const size_t got = size ? std::fread(bytes.data(), 1, size, file.get()) : 0;
  if (got != size) {
    throw DataError("cannot read " + path.string() + ": got " + size_str(got) + " of " + size_str(size) +
                    (std::ferror(file.get()) ? std::string(" (") + std::strerror(errno) + ")" : ""));
  }
  return bytes;
}

// Inflates a whole .gz file (one or more gzip members) in memory.
std::vector<uint8_t> read_gz(const fs::path& path) {
  const std::vector<uint8_t> in = read_plain(path);
  const std::string where = path.string();
  if (in.empty()) throw DataError(where + " is empty (0 bytes), not a gzip file");
  if (in[0] != 0x1f || (in.size() > 1 && in[1] != 0x8b)) {
    throw DataError(where + " is not a gzip file (it does not start with the gzip magic bytes 1f 8b)");
  }
  // The trailer holds the uncompressed size mod 2^32: a good first guess for one member.
  const size_t n = in.size();
  const uint64_t isize = n < 18 ? 0
                                : uint64_t{in[n - 4]} | uint64_t{in[n - 3]} << 8 | uint64_t{in[n - 2]} << 16 |
                                      uint64_t{in[n - 1]} << 24;
  std::vector<uint8_t> out(std::clamp<uint64_t>(isize, 1, uint64_t{1032} * in.size()) + 1);
  size_t produced = 0;

  z_stream zs{};
  if (inflateInit2(&zs, 15 + 16) != Z_OK) throw DataError(where + ": cannot start zlib: out of memory");
  std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&zs, &inflateEnd);
  size_t consumed = 0;
  constexpr size_t kMaxChunk = std::numeric_limits<uInt>::max() / 2;  // avail_* are 32-bit
  for (;;) {
    if (produced == out.size()) out.resize(out.size() * 2);
    zs.next_in = const_cast<Bytef*>(in.data() + consumed);
    zs.avail_in = static_cast<uInt>(std::min(in.size() - consumed, kMaxChunk));
    zs.next_out = out.data() + produced;
    zs.avail_out = static_cast<uInt>(std::min(out.size() - produced, kMaxChunk));
    const uInt avail_in = zs.avail_in, avail_out = zs.avail_out;
    const int ret = inflate(&zs, Z_NO_FLUSH);
    consumed += avail_in - zs.avail_in;
    produced += avail_out - zs.avail_out;
    if (ret == Z_STREAM_END) {
      // Another gzip member may follow (as `cat a.gz b.gz` makes); zero padding is ignored.
      const size_t rest = in.size() - consumed;
      if (rest == 0 || std::all_of(in.begin() + consumed, in.end(), [](uint8_t b) { return b == 0; })) break;
      if (rest >= 2 && in[consumed] == 0x1f && in[consumed + 1] == 0x8b) {
        inflateReset(&zs);
        continue;
      }
      throw DataError(where + ": " + size_str(rest) + " of unexpected data after the end of the gzip stream" +
                      " (at compressed byte " + std::to_string(consumed) + "); the file is corrupt");
    }
    if (ret == Z_OK) continue;
    if (ret == Z_BUF_ERROR && consumed == in.size()) {
      throw DataError(where + ": the gzip stream is truncated (the file ends after " + size_str(in.size()) +
                      ", " + size_str(produced) + " uncompressed, before the end of the compressed data); "
                      "download or compress it again");
    }
    if (ret == Z_BUF_ERROR) continue;  // needs more output space: grown above
    throw DataError(where + ": the gzip data is corrupt (zlib: " + (zs.msg ? zs.msg : zError(ret)) +
                    ", at compressed byte " + std::to_string(consumed) + ")");
  }
  out.resize(produced);
  out.shrink_to_fit();
  return out;
}

std::vector<uint8_t> read_any(const fs::path& path) { return is_gz(path) ? read_gz(path) : read_plain(path); }

// Reads the files on up to num_threads() threads (POLYAK_THREADS); rethrows the first file's error in order.
std::vector<std::vector<uint8_t>> read_all(const std::vector<fs::path>& paths) {
  std::vector<std::vector<uint8_t>> bytes(paths.size());
  std::vector<std::exception_ptr> errors(paths.size());
  auto read_one = [&](size_t i) {
    try {
      bytes[i] = read_any(paths[i]);
    } catch (...) {
      errors[i] = std::current_exception();
    }
  };
  const size_t workers = std::min<size_t>(paths.size(), static_cast<size_t>(std::max(1, num_threads())));
  if (workers <= 1) {
    for (size_t i = 0; i < paths.size(); ++i) read_one(i);
  } else {
    std::vector<std::thread> threads;
    for (size_t w = 0; w < workers; ++w) {
      threads.emplace_back([&, w] {
        for (size_t i = w; i < paths.size(); i += workers) read_one(i);
      });
    }
    for (std::thread& t : threads) t.join();
  }
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  return bytes;
}

// Checks one file's records and appends its images and labels to `set`;
// `label_slot` picks which of the record's label bytes becomes the label.
void append_records(const std::vector<uint8_t>& bytes, const fs::path& path, const Layout& layout,
                    int label_slot, ImageSet& set) {
  const std::string where = std::string(layout.dataset) + " file " + path.string();
  const std::string size_kind = is_gz(path) ? "uncompressed size" : "size";
  const int64_t record = layout.label_bytes + kImageBytes;
  if (bytes.empty()) {
    throw DataError(where + " is empty (" + size_kind + " 0 bytes); expected records of " + size_str(record));
  }
  if (bytes.size() % record != 0) {
    throw DataError(where + ": " + size_kind + " " + size_str(bytes.size()) + " is not a multiple of the record size " +
                    size_str(record) + " (" + std::to_string(layout.label_bytes) + " label byte" +
                    (layout.label_bytes > 1 ? "s" : "") + " + 3072 pixel bytes): " +
                    std::to_string(bytes.size() / record) + " whole records and " +
                    size_str(bytes.size() % record) + " left over; the file is truncated or not a " + layout.dataset +
                    " binary file");
  }
  const int64_t n = static_cast<int64_t>(bytes.size()) / record;
  const int64_t first = set.count;
  set.pixels.resize((first + n) * kImageBytes);
  set.labels.resize(first + n);
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* rec = bytes.data() + r * record;
    for (int k = 0; k < layout.label_bytes; ++k) {
      if (rec[k] >= layout.label_limits[k]) {
        throw DataError(where + ": record " + std::to_string(r) + " (byte offset " + std::to_string(r * record + k) +
                        ") has " + layout.label_kinds[k] + " " + std::to_string(rec[k]) + ", outside 0.." +
                        std::to_string(layout.label_limits[k] - 1) + "; the file is corrupt or not a " +
                        layout.dataset + " binary file");
      }
    }
    set.labels[first + r] = rec[label_slot];
    std::memcpy(set.pixels.data() + (first + r) * kImageBytes, rec + layout.label_bytes, kImageBytes);
  }
  set.count = first + n;
}

ImageSet load_records(const std::string& dir, const Layout& layout, const std::vector<std::string>& names,
                      int label_slot) {
  const std::vector<fs::path> dirs = candidate_dirs(dir, layout);
  std::vector<fs::path> paths;
  for (const std::string& name : names) {
    std::vector<std::string> looked;
    std::optional<fs::path> found = find_file(dirs, name, &looked);
    if (!found) throw_missing(dir, layout, name, looked);
    paths.push_back(*found);
  }
  std::vector<std::vector<uint8_t>> bytes = read_all(paths);
  ImageSet set;
  size_t total = 0;
  for (const auto& b : bytes) total += b.size() / (layout.label_bytes + kImageBytes);
  set.pixels.reserve(total * kImageBytes);
  set.labels.reserve(total);
  for (size_t i = 0; i < paths.size(); ++i) {
    append_records(bytes[i], paths[i], layout, label_slot, set);
    std::vector<uint8_t>().swap(bytes[i]);
  }
  return set;
}

// Class names from an optional text file (one per line, blank lines ignored), else the
// built-in list. A file with the wrong number of names is an error.
std::vector<std::string> class_names(const std::string& dir, const Layout& layout, const std::string& name,
                                     const std::vector<std::string>& builtin) {
  const std::optional<fs::path> path = find_file(candidate_dirs(dir, layout), name);
  if (!path) return builtin;
  const std::vector<uint8_t> bytes = read_any(*path);
  std::vector<std::string> names;
  size_t begin = 0;
  while (begin <= bytes.size()) {
    size_t end = begin;
    while (end < bytes.size() && bytes[end] != '\n') ++end;
    std::string line(bytes.begin() + begin, bytes.begin() + end);
    const auto space = [](unsigned char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\0'; };
    while (!line.empty() && space(line.back())) line.pop_back();
    size_t lead = 0;
    while (lead < line.size() && space(line[lead])) ++lead;
    line.erase(0, lead);
    if (!line.empty()) names.push_back(line);
    begin = end + 1;
  }
  if (names.size() != builtin.size()) {
    throw DataError(std::string(layout.dataset) + " file " + path->string() + ": expected " +
                    std::to_string(builtin.size()) + " class names, one per line, but found " +
                    std::to_string(names.size()));
  }
  return names;
}

void check_indices(const ImageSet& set, const std::vector<int64_t>& indices, const char* what) {
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] < 0 || indices[i] >= set.count) {
      throw std::out_of_range(std::string(what) + ": index " + std::to_string(indices[i]) + " (entry " +
                              std::to_string(i) + ") is outside a set of " + std::to_string(set.count) + " images");
    }
  }
}

}  // namespace

const std::vector<std::string>& cifar10_class_names() {
  static const std::vector<std::string> names = {"airplane", "automobile", "bird",  "cat",  "deer",
                                                 "dog",      "frog",       "horse", "ship", "truck"};
  return names;
}

const std::vector<std::string>& cifar100_fine_class_names() {
  static const std::vector<std::string> names = {
      "apple",       "aquarium_fish", "baby",         "bear",       "beaver",      "bed",        "bee",
      "beetle",      "bicycle",       "bottle",       "bowl",       "boy",         "bridge",     "bus",
      "butterfly",   "camel",         "can",          "castle",     "caterpillar", "cattle",     "chair",
      "chimpanzee",  "clock",         "cloud",        "cockroach",  "couch",       "crab",       "crocodile",
      "cup",         "dinosaur",      "dolphin",      "elephant",   "flatfish",    "forest",     "fox",
      "girl",        "hamster",       "house",        "kangaroo",   "keyboard",    "lamp",       "lawn_mower",
      "leopard",     "lion",          "lizard",       "lobster",    "man",         "maple_tree", "motorcycle",
      "mountain",    "mouse",         "mushroom",     "oak_tree",   "orange",      "orchid",     "otter",
      "palm_tree",   "pear",          "pickup_truck", "pine_tree",  "plain",       "plate",      "poppy",
      "porcupine",   "possum",        "rabbit",       "raccoon",    "ray",         "road",       "rocket",
      "rose",        "sea",           "seal",         "shark",      "shrew",       "skunk",      "skyscraper",
      "snail",       "snake",         "spider",       "squirrel",   "streetcar",   "sunflower",  "sweet_pepper",
      "table",       "tank",          "telephone",    "television", "tiger",       "tractor",    "train",
      "trout",       "tulip",         "turtle",       "wardrobe",   "whale",       "willow_tree", "wolf",
      "woman",       "worm"};
  return names;
}

const std::vector<std::string>& cifar100_coarse_class_names() {
  static const std::vector<std::string> names = {"aquatic_mammals",
                                                 "fish",
                                                 "flowers",
                                                 "food_containers",
                                                 "fruit_and_vegetables",
                                                 "household_electrical_devices",
                                                 "household_furniture",
                                                 "insects",
                                                 "large_carnivores",
                                                 "large_man-made_outdoor_things",
                                                 "large_natural_outdoor_scenes",
                                                 "large_omnivores_and_herbivores",
                                                 "medium_mammals",
                                                 "non-insect_invertebrates",
                                                 "people",
                                                 "reptiles",
                                                 "small_mammals",
                                                 "trees",
                                                 "vehicles_1",
                                                 "vehicles_2"};
  return names;
}

ImageSet load_cifar10(const std::string& dir, CifarSplit split) {
  const std::vector<std::string> files =
      split == CifarSplit::Train
          ? std::vector<std::string>{"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                                     "data_batch_5.bin"}
          : std::vector<std::string>{"test_batch.bin"};
  ImageSet set = load_records(dir, kCifar10Layout, files, 0);
  set.num_classes = 10;
  set.class_names = class_names(dir, kCifar10Layout, "batches.meta.txt", cifar10_class_names());
  set.mean = kCifar10Mean;
  set.stddev = kCifar10Std;
  return set;
}

ImageSet load_cifar100(const std::string& dir, CifarSplit split, CifarLabel label) {
  const std::string file = split == CifarSplit::Train ? "train.bin" : "test.bin";
  const bool fine = label == CifarLabel::Fine;
  ImageSet set = load_records(dir, kCifar100Layout, {file}, fine ? 1 : 0);
  set.num_classes = fine ? 100 : 20;
  set.class_names = fine ? class_names(dir, kCifar100Layout, "fine_label_names.txt", cifar100_fine_class_names())
                         : class_names(dir, kCifar100Layout, "coarse_label_names.txt", cifar100_coarse_class_names());
  set.mean = kCifar100Mean;
  set.stddev = kCifar100Std;
  return set;
}

ImageSet subset(const ImageSet& set, const std::vector<int64_t>& indices) {
  check_indices(set, indices, "subset");
  ImageSet out;
  out.count = static_cast<int64_t>(indices.size());
  out.channels = set.channels;
  out.height = set.height;
  out.width = set.width;
  out.num_classes = set.num_classes;
  out.class_names = set.class_names;
  out.mean = set.mean;
  out.stddev = set.stddev;
  const int64_t size = set.image_size();
  out.pixels.resize(out.count * size);
  out.labels.resize(out.count);
  for (int64_t i = 0; i < out.count; ++i) {
    std::memcpy(out.pixels.data() + i * size, set.image(indices[i]), size);
    out.labels[i] = set.labels[indices[i]];
  }
  return out;
}

Tensor to_tensor(const ImageSet& set, const std::vector<int64_t>& indices, Device device) {
  check_indices(set, indices, "to_tensor");
  const Normalizer normalizer(set);
  const int64_t plane = int64_t{set.height} * set.width, size = set.image_size();
  const int64_t batch = static_cast<int64_t>(indices.size());
  std::vector<float> values(batch * size);
  for (int64_t i = 0; i < batch; ++i) normalizer.image(set.image(indices[i]), plane, values.data() + i * size);
  return Tensor::from_data(values.data(), {batch, set.channels, set.height, set.width}, device);
}

Tensor labels_tensor(const ImageSet& set, const std::vector<int64_t>& indices, Device device) {
  check_indices(set, indices, "labels_tensor");
  std::vector<int64_t> values(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) values[i] = set.labels[indices[i]];
  return Tensor::from_data(values.data(), {static_cast<int64_t>(indices.size())}, device);
}

}  // namespace polyak::data
