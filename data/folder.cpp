// Image folders: list the classes and files, then decode, resize and store the images
// on the thread team (each file fills its own slot, so the result does not depend on
// the number of threads). The stb_image and stb_image_resize implementations of the
// project are compiled here.
#include "data/folder.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include "engine/parallel.h"

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_RESIZE_IMPLEMENTATION
// stb_image detects the format from the bytes, not the file name: without these, a file
// named .png holding a GIF, PSD, PIC, PNM, HDR or TGA would reach decoders we never
// meant to expose (and which have had memory-safety bugs). Only what is_image_file admits.
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
// Zeroed memory for stb_image: it allocates its JPEG decoder state without clearing it,
// and a scan that names a Huffman table no DHT segment defined decodes with whatever
// the allocation held, a previous image's table included (found by fuzzing: a symbol
// index of 583 in a 256-entry table, reproducible only after other inputs). An
// all-zero table decodes every code as symbol 0 through the lookup table, in bounds.
#define STBI_MALLOC(size) std::calloc(1, size)
#define STBI_REALLOC(pointer, size) std::realloc(pointer, size)
#define STBI_FREE(pointer) std::free(pointer)
// On some corrupt JPEG streams stb_image's bit reader shifts by more than 31 (its bit
// count goes negative after a bad Huffman code; fixed upstream after Debian 12's copy):
// undefined behaviour, which x86 executes as a shift by n mod 32, feeding garbage bits
// to a decoder that then fails or yields a garbage image. No memory outside its buffers
// is touched (AddressSanitizer watches that while fuzzing). The fuzz builds (clang)
// switch off this one check for the library's own functions, so that fuzzing goes on
// looking for what we can fix.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((no_sanitize("shift-exponent"))), apply_to = function)
#endif
#if __has_include(<stb/stb_image.h>)
#include <stb/stb_image.h>
#include <stb/stb_image_resize.h>
#else
#include <stb_image.h>
#include <stb_image_resize.h>
#endif
#if defined(__clang__)
#pragma clang attribute pop
#endif

namespace polyak::data {
namespace {

namespace fs = std::filesystem;

bool is_image_file(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}

std::vector<uint8_t> read_file(const fs::path& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) throw DataError("cannot read image " + path.string() + ": " + ec.message());
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw DataError("cannot open image " + path.string() + ": " + std::strerror(errno));
  std::vector<uint8_t> bytes(size);
  if (size && std::fread(bytes.data(), 1, size, file.get()) != size) {
    throw DataError("cannot read image " + path.string() + ": short read");
  }
  return bytes;
}

// Whether stb_image (Debian 12's, 2022-09) can decode with the Huffman table of these 16
// code counts without indexing past its 256 symbols. It builds canonical codes
// (stbi__build_huffman): at length L the codes run from first[L] up to end[L], and
// delta[L] = (symbols of shorter codes) - first[L]; maxcode[L] = end[L] << (16 - L). Codes of
// up to 9 bits go through a lookup table; a longer one is read as the 16 next bits t,
// its length L as the smallest L >= 10 with t < maxcode[L], and its symbol index as
// (t >> (16 - L)) + delta[L], with no check that this index is a symbol of the table
// (fixed upstream in 2023; found here by fuzzing: index 933 of 256). Every t that can
// land on L lies in [max of maxcode[9..L-1], maxcode[L]), so the indices of L form one
// interval, checked here against [0, symbols).
bool huffman_decodes_in_range(const unsigned (&counts)[17]) {
  int64_t delta[18] = {}, maxcode[18] = {};
  int64_t code = 0, symbols = 0;
  for (int length = 1; length <= 16; ++length) {
    delta[length] = symbols - code;
    code += counts[length];
    symbols += counts[length];
    if (counts[length] && code - 1 >= (int64_t{1} << length)) return true;  // stb_image refuses it itself
    maxcode[length] = code << (16 - length);
    code <<= 1;
  }
  // Codes of up to 9 bits are contiguous from 0 (canonical), so the lookup table serves
  // every t below maxcode[9]: the smallest t that reaches a length is the largest maxcode
  // before it.
  int64_t floor = maxcode[9];
  for (int length = 10; length <= 16; ++length) {
    const int64_t ceiling = std::min<int64_t>(maxcode[length], 1 << 16);
    if (floor < ceiling) {
      const int64_t first = (floor >> (16 - length)) + delta[length];
      const int64_t last = ((ceiling - 1) >> (16 - length)) + delta[length];
      if (first < 0 || last >= symbols) return false;
    }
    floor = std::max(floor, maxcode[length]);
  }
  return true;
}

// What is wrong with a JPEG that stb_image must not be given, or "" if nothing is.
//
// A Huffman table of more than 256 codes: the stb_image of Debian 12 (2022-09) builds
// it without checking the count (stbi__build_huffman writes past its 257-entry size
// array; found by fuzzing, fixed upstream in 2023). A Huffman table whose long codes
// decode to symbol indices outside the table (huffman_decodes_in_range). No end-of-image marker: the file
// was cut short, and stb_image would fill the missing part of the picture with zeros
// and report success (Pillow refuses such files too).
//
// The walk visits every marker stb_image can act on, in order: between segments stb_image
// skips non-0xFF bytes one at a time until it finds a marker, and inside entropy-coded
// data it stops at the first 0xFF that is not a stuffed zero or a restart marker, so
// stepping byte by byte and jumping over each segment by its length reaches a superset of
// the DHT segments stb_image parses. A DHT segment (length L) holds tables of 17 + n
// bytes: class/id, 16 code counts per code length, then n = sum of the counts symbols.
// Past the end of the file stb_image reads zeros, and so does this walk.
std::string jpeg_defect(const std::vector<uint8_t>& bytes) {
  const size_t size = bytes.size();
  auto byte_at = [&](size_t i) -> unsigned { return i < size ? bytes[i] : 0u; };
  size_t pos = 0;
  while (pos < size && bytes[pos] == 0xFF) ++pos;
  if (pos == 0 || byte_at(pos) != 0xD8) return "";  // no SOI: stb_image will not decode it as JPEG
  ++pos;
  while (pos < size) {
    if (bytes[pos] != 0xFF) {
      ++pos;
      continue;
    }
    while (pos < size && bytes[pos] == 0xFF) ++pos;  // fill bytes
    if (pos >= size) break;
    const unsigned marker = bytes[pos++];
    const bool standalone = marker == 0x00 || marker == 0x01 || marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7);
    if (standalone) continue;
    if (marker == 0xD9) return "";  // end of image: stb_image stops here
    const size_t length = byte_at(pos) << 8 | byte_at(pos + 1);
    if (marker != 0xC4) {
      pos += std::max<size_t>(length, 2);
      continue;
    }
    pos += 2;
    for (long remaining = static_cast<long>(length) - 2; remaining > 0;) {
      size_t codes = 0;
      unsigned counts[17] = {};
      for (size_t i = 1; i <= 16; ++i) codes += counts[i] = byte_at(pos + i);
      if (codes > 256) return "corrupt JPEG (a Huffman table declares more than 256 codes)";
      if (!huffman_decodes_in_range(counts)) return "corrupt JPEG (a Huffman table whose codes decode outside it)";
      pos += 17 + codes;
      remaining -= static_cast<long>(17 + codes);
    }
  }
  return "truncated JPEG (no end-of-image marker)";
}

// What is wrong with a BMP that stb_image must not be given, or "" if nothing is: its
// header promises more pixel bytes than the file holds (stb_image would read zeros past
// the end, so a 100-byte file could claim millions of pixels). Rows are padded to 4
// bytes; the header fields are read where stb_image reads them (little-endian: pixel
// data offset at 10, header size at 14, then width and height, 16-bit in the 12-byte
// OS/2 header, and bits per pixel).
std::string bmp_defect(const std::vector<uint8_t>& bytes) {
  if (bytes.size() < 2 || bytes[0] != 'B' || bytes[1] != 'M') return "";
  auto le = [&](size_t at, int n) -> int64_t {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = v << 8 | (at + i < bytes.size() ? bytes[at + i] : 0u);
    return n == 4 ? static_cast<int64_t>(static_cast<int32_t>(v)) : static_cast<int64_t>(v);
  };
  const int64_t offset = le(10, 4), header = le(14, 4);
  const bool core = header == 12;
  const int64_t width = core ? le(18, 2) : le(18, 4), height = std::abs(core ? le(20, 2) : le(22, 4));
  const int64_t bits = core ? le(24, 2) : le(28, 2);
  // stb_image rejects these itself (STBI_MAX_DIMENSIONS: sides up to 2^24), and the
  // bounds keep the sizes below far from overflowing.
  constexpr int64_t kMaxSide = int64_t{1} << 24;
  if (offset < 0 || width <= 0 || width > kMaxSide || height > kMaxSide || bits <= 0 || bits > 32) return "";
  // (The last row's padding may be missing: some writers leave it out.)
  const int64_t row = (width * bits + 31) / 32 * 4, last_row = (width * bits + 7) / 8;
  const int64_t needed = height == 0 ? offset : offset + row * (height - 1) + last_row;
  if (needed <= static_cast<int64_t>(bytes.size())) return "";
  return "truncated BMP (its header promises " + std::to_string(needed) + " bytes, the file holds " +
         std::to_string(bytes.size()) + ")";
}

// What is wrong with a PNG that stb_image must not be given, or "" if nothing is: a
// chunk longer than what is left of the file. stb_image sizes its buffer for the
// compressed data from the chunk lengths before reading them, so a 100-byte file that
// claims a 2 GiB chunk would make it allocate 2 GiB (found by fuzzing). A chunk is a
// 4-byte big-endian length, a 4-byte type, the data and a 4-byte CRC; IEND ends the
// image, after the 8-byte signature.
std::string png_defect(const std::vector<uint8_t>& bytes) {
  static constexpr uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (bytes.size() < 8 || !std::equal(kSignature, kSignature + 8, bytes.begin())) return "";
  for (size_t pos = 8; pos < bytes.size();) {
    const size_t left = bytes.size() - pos;
    const uint32_t length = left < 4 ? 0 : uint32_t{bytes[pos]} << 24 | uint32_t{bytes[pos + 1]} << 16 |
                                               uint32_t{bytes[pos + 2]} << 8 | bytes[pos + 3];
    if (left < 12 || length > left - 12) {
      return "truncated PNG (a chunk at byte " + std::to_string(pos) + " claims " + std::to_string(length) +
             " bytes of data, the file holds " + std::to_string(left < 12 ? 0 : left - 12) + " more)";
    }
    if (std::equal(bytes.begin() + pos + 4, bytes.begin() + pos + 8, "IEND")) return "";
    pos += 12 + length;
  }
  return "truncated PNG (no IEND chunk)";
}

// Decodes one file into `dst` (3 x height x width, CHW).
void load_one(const fs::path& path, int height, int width, int64_t max_pixels, uint8_t* dst) {
  const std::vector<uint8_t> bytes = read_file(path);
  if (bytes.empty()) throw DataError("cannot decode image " + path.string() + ": the file is empty");
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    throw DataError("cannot decode image " + path.string() + ": the file is larger than 2 GiB");
  }
  for (const std::string& defect : {jpeg_defect(bytes), png_defect(bytes), bmp_defect(bytes)})
    if (!defect.empty()) throw DataError("cannot decode image " + path.string() + ": " + defect);
  int w = 0, h = 0, channels_in_file = 0;
  if (stbi_info_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &channels_in_file) &&
      int64_t{w} * h > max_pixels) {
    throw DataError("cannot decode image " + path.string() + ": " + std::to_string(w) + " x " + std::to_string(h) +
                    " pixels, more than the " + std::to_string(max_pixels) + " the loader accepts");
  }
  std::unique_ptr<stbi_uc, void (*)(void*)> decoded(
      stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &channels_in_file, 3),
      &stbi_image_free);
  if (!decoded) {
    const char* why = stbi_failure_reason();
    throw DataError("cannot decode image " + path.string() + " (stb_image: " + (why ? why : "unknown error") + ")");
  }
  if (w <= 0 || h <= 0) {  // stb_image accepts a BMP of height 0; resizing it divides by zero
    throw DataError("cannot decode image " + path.string() + ": it has no pixels (" + std::to_string(w) + " x " +
                    std::to_string(h) + ")");
  }
  const uint8_t* hwc = decoded.get();
  std::vector<uint8_t> resized;
  if (w != width || h != height) {
    resized.resize(static_cast<size_t>(height) * width * 3);
    if (!stbir_resize_uint8(hwc, w, h, 0, resized.data(), width, height, 0, 3)) {
      throw DataError("cannot resize image " + path.string() + " from " + std::to_string(w) + "x" + std::to_string(h) +
                      " to " + std::to_string(width) + "x" + std::to_string(height));
    }
    hwc = resized.data();
  }
  const int64_t plane = int64_t{height} * width;
  for (int64_t p = 0; p < plane; ++p) {
    for (int c = 0; c < 3; ++c) dst[c * plane + p] = hwc[p * 3 + c];
  }
}

}  // namespace

ImageSet load_image_folder(const std::string& root_str, const FolderOptions& options) {
  if (options.height < 1 || options.width < 1) {
    throw std::invalid_argument("load_image_folder: the image size must be positive, got " +
                                std::to_string(options.height) + "x" + std::to_string(options.width));
  }
  const fs::path root(root_str.empty() ? "." : root_str);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    throw DataError("image folder " + root.string() +
                    (fs::exists(root, ec) ? " is not a folder" : " does not exist") +
                    " (expected root/<class name>/<images>)");
  }

  std::vector<std::string> classes = options.classes;
  if (classes.empty()) {
    for (const fs::directory_entry& entry : fs::directory_iterator(root)) {
      const std::string name = entry.path().filename().string();
      if (entry.is_directory() && !name.empty() && name[0] != '.') classes.push_back(name);
    }
    std::sort(classes.begin(), classes.end());
    if (classes.empty()) {
      throw DataError("image folder " + root.string() + " has no class subfolders (expected root/<class name>/<images>)");
    }
  }

  std::vector<fs::path> files;
  std::vector<int64_t> labels;
  for (size_t k = 0; k < classes.size(); ++k) {
    const fs::path dir = root / classes[k];
    if (!fs::is_directory(dir, ec)) throw DataError("class folder " + dir.string() + " does not exist");
    std::vector<fs::path> found;
    for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      if (entry.is_regular_file() && !name.empty() && name[0] != '.' && is_image_file(entry.path())) {
        found.push_back(entry.path());
      }
    }
    if (found.empty()) {
      throw DataError("class folder " + dir.string() + " holds no images (.png, .jpg, .jpeg or .bmp files)");
    }
    std::sort(found.begin(), found.end(),
              [](const fs::path& a, const fs::path& b) { return a.filename().string() < b.filename().string(); });
    for (fs::path& f : found) {
      files.push_back(std::move(f));
      labels.push_back(static_cast<int64_t>(k));
    }
  }

  ImageSet set;
  set.count = static_cast<int64_t>(files.size());
  set.channels = 3;
  set.height = options.height;
  set.width = options.width;
  set.num_classes = static_cast<int>(classes.size());
  set.class_names = classes;
  set.labels = std::move(labels);
  set.pixels.resize(static_cast<size_t>(set.count * set.image_size()));

  // Every file on the thread team; errors are kept per file and the first in file order
  // is thrown, so the message does not depend on the number of threads.
  std::vector<std::string> errors(files.size());
  parallel_for(set.count, int64_t{1} << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      try {
        load_one(files[i], set.height, set.width, options.max_pixels, set.pixels.data() + i * set.image_size());
      } catch (const std::exception& e) {
        errors[i] = e.what();
        if (errors[i].empty()) errors[i] = "cannot load image " + files[i].string();
      }
    }
  });
  for (const std::string& error : errors) {
    if (!error.empty()) throw DataError(error);
  }

  if (options.stats_from_data) {
    const int64_t plane = int64_t{set.height} * set.width;
    for (int c = 0; c < 3; ++c) {
      uint64_t sum = 0, sum_sq = 0;  // exact: at most 255^2 * 2^40 per channel before overflow
      for (int64_t i = 0; i < set.count; ++i) {
        const uint8_t* p = set.image(i) + c * plane;
        for (int64_t j = 0; j < plane; ++j) {
          sum += p[j];
          sum_sq += uint64_t{p[j]} * p[j];
        }
      }
      const double n = static_cast<double>(set.count * plane);
      const double mean = static_cast<double>(sum) / n / 255.0;
      const double var = std::max(0.0, static_cast<double>(sum_sq) / n / (255.0 * 255.0) - mean * mean);
      const double sd = std::sqrt(var);
      set.mean.push_back(static_cast<float>(mean));
      set.stddev.push_back(sd > 1e-6 ? static_cast<float>(sd) : 1.0f);
    }
  } else {
    set.mean.assign(3, 0.5f);
    set.stddev.assign(3, 0.5f);
  }
  return set;
}

}  // namespace polyak::data
