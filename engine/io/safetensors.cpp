// safetensors reader and writer; the format and the layout rules are in safetensors.h.
#include "engine/io/safetensors.h"

#include "engine/io/atomic_file.h"
#include "engine/io/half.h"

#include <sys/stat.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <unordered_set>

namespace polyak::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is copied as is: polyak needs a little-endian host");

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
constexpr size_t kMaxShapeDims = 64;               // numpy's limit; bounds what a header can make us allocate

// How a tensor's elements are stored in the file: a tensor's own dtype, or F16 for
// float32 tensors kept in 2 bytes (read back as float32).
enum class Stored : uint8_t { U8, F16, I32, F32, I64 };

Stored stored_as(DType dtype) {
  switch (dtype) {
    case DType::F32: return Stored::F32;
    case DType::I64: return Stored::I64;
    case DType::I32: return Stored::I32;
    case DType::U8: return Stored::U8;
  }
  return Stored::U8;
}

DType memory_dtype(Stored stored) {
  switch (stored) {
    case Stored::U8: return DType::U8;
    case Stored::I32: return DType::I32;
    case Stored::I64: return DType::I64;
    case Stored::F16:
    case Stored::F32: return DType::F32;
  }
  return DType::U8;
}

const char* st_dtype_name(Stored stored) {
  switch (stored) {
    case Stored::F32: return "F32";
    case Stored::F16: return "F16";
    case Stored::I64: return "I64";
    case Stored::I32: return "I32";
    case Stored::U8: return "U8";
  }
  return "?";
}

size_t stored_size(Stored stored) { return stored == Stored::F16 ? 2 : dtype_size(memory_dtype(stored)); }

bool parse_dtype(const std::string& name, Stored* stored) {
  for (Stored s : {Stored::F32, Stored::F16, Stored::I64, Stored::I32, Stored::U8}) {
    if (name == st_dtype_name(s)) {
      *stored = s;
      return true;
    }
  }
  return false;
}

// The reference library orders tensors by descending dtype (its enum order, in which
// U8 < F16 < I32 < F32 < I64, the order of Stored), then by name; that keeps each
// tensor aligned to its element size.
int dtype_rank(Stored stored) { return static_cast<int>(stored); }

// A name for messages: quoted, non-printable bytes as \xHH, long names cut short.
std::string quote(const std::string& s) {
  constexpr size_t kMax = 120;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || c == '"' || c == '\\') {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMax) out += "...";
  return out + "\"";
}

std::string system_error(const std::string& what, int err) { return what + ": " + std::strerror(err); }

// ------------------------------------------------------------------------- writing

// A JSON string literal exactly as serde_json writes it (compact, UTF-8 kept as is).
std::string json_string(const std::string& path, const std::string& s, const char* what) {
  try {
    return nlohmann::json(s).dump();
  } catch (const nlohmann::json::exception&) {
    throw SafetensorsError(path, std::string(what) + " " + quote(s) + " is not valid UTF-8");
  }
}

struct OutTensor {
  const std::string* name;
  Tensor host;  // contiguous, on the CPU
  Stored stored;
  std::vector<uint16_t> halves;  // the data as F16, when stored so
  uint64_t bytes;
  const void* data() const { return stored == Stored::F16 ? static_cast<const void*>(halves.data()) : host.raw_data(); }
};

std::string make_header(const std::string& path, const std::vector<OutTensor>& order,
                        const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) header += ',';
      first = false;
      header += json_string(path, key, "metadata key");
      header += ':';
      header += json_string(path, value, "metadata value");
    }
    header += '}';
  }
  uint64_t offset = 0;
  for (const OutTensor& t : order) {
    if (header.size() > 1) header += ',';
    header += json_string(path, *t.name, "tensor name");
    header += ":{\"dtype\":\"";
    header += st_dtype_name(t.stored);
    header += "\",\"shape\":[";
    for (size_t d = 0; d < t.host.shape().size(); ++d) {
      if (d) header += ',';
      header += std::to_string(t.host.shape()[d]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.bytes) + "]}";
    offset += t.bytes;
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');
  return header;
}

// ------------------------------------------------------------------------- reading

struct HeaderEntry {
  std::string name;
  std::string dtype;
  Shape shape;
  std::vector<uint64_t> offsets;
  unsigned seen = 0;  // kDtype | kShape | kOffsets
};
constexpr unsigned kDtype = 1, kShape = 2, kOffsets = 4;

// Streams the header JSON (nlohmann's SAX interface) straight into HeaderEntry records:
// no document tree, so memory stays proportional to the tensors a header declares,
// and the first value of a wrong type stops the parse with a message that says where.
class HeaderReader : public nlohmann::json_sax<nlohmann::json> {
 public:
  std::vector<HeaderEntry> entries;
  std::map<std::string, std::string> metadata;
  std::string error;

  bool null() override { return scalar("null"); }
  bool boolean(bool) override { return scalar("a boolean"); }
  bool number_integer(number_integer_t v) override {
    return v < 0 ? negative(v) : unsigned_integer(static_cast<uint64_t>(v));
  }
  bool number_unsigned(number_unsigned_t v) override { return unsigned_integer(v); }
  bool number_float(number_float_t, const string_t& text) override { return scalar("the non-integer " + text); }
  bool binary(binary_t&) override { return scalar("binary data"); }

  bool string(string_t& s) override {
    if (skip_ > 0) return true;
    switch (context()) {
      case Ctx::Tensor:
        if (field_ == "dtype") {
          current().dtype = s;
          return true;
        }
        return scalar("a string");
      case Ctx::Metadata:
        metadata.emplace(meta_key_, s);
        return true;
      default:
        return scalar("a string");
    }
  }

  bool start_object(std::size_t) override {
    if (skip_ > 0) return ++skip_, true;
    if (stack_.empty()) return push(Ctx::Top);
    switch (context()) {
      case Ctx::Top:
        if (key_ == "__metadata__") {
          if (metadata_seen_) return fail("\"__metadata__\" appears twice");
          metadata_seen_ = true;
          return push(Ctx::Metadata);
        }
        if (!names_.insert(key_).second) return fail("tensor " + quote(key_) + " appears twice");
        entries.push_back(HeaderEntry{key_, {}, {}, {}, 0});
        return push(Ctx::Tensor);
      case Ctx::Tensor:
        if (known_field()) return scalar("an object");
        skip_ = 1;  // a field we do not know: ignored, as the reference does
        return true;
      default:
        return scalar("an object");
    }
  }

  bool start_array(std::size_t) override {
    if (skip_ > 0) return ++skip_, true;
    if (stack_.empty()) return fail("the header is not a JSON object");
    if (context() == Ctx::Tensor) {
      if (field_ == "shape") return push(Ctx::Shape);
      if (field_ == "data_offsets") return push(Ctx::Offsets);
      if (field_ != "dtype") {
        skip_ = 1;
        return true;
      }
    }
    return scalar("an array");
  }

  bool key(string_t& k) override {
    if (skip_ > 0) return true;
    switch (context()) {
      case Ctx::Top: key_ = k; return true;
      case Ctx::Tensor: {
        field_ = k;
        const unsigned bit = k == "dtype" ? kDtype : k == "shape" ? kShape : k == "data_offsets" ? kOffsets : 0;
        if (bit & current().seen) return fail("tensor " + quote(current().name) + " has \"" + k + "\" twice");
        current().seen |= bit;
        return true;
      }
      case Ctx::Metadata:
        meta_key_ = k;
        if (metadata.count(k)) return fail("\"__metadata__\" has the key " + quote(k) + " twice");
        return true;
      default: return fail("unexpected key");  // not reached: keys only occur in objects
    }
  }

  bool end_object() override {
    if (skip_ > 0) return --skip_, true;
    if (context() == Ctx::Tensor) {
      const HeaderEntry& e = current();
      for (auto [bit, name] : {std::pair{kDtype, "dtype"}, {kShape, "shape"}, {kOffsets, "data_offsets"}}) {
        if (!(e.seen & bit)) return fail("tensor " + quote(e.name) + " has no \"" + name + "\"");
      }
    }
    stack_.pop_back();
    return true;
  }

  bool end_array() override {
    if (skip_ > 0) return --skip_, true;
    if (context() == Ctx::Offsets && current().offsets.size() != 2) {
      return fail("\"data_offsets\" of tensor " + quote(current().name) + " must be [begin, end], got " +
                  std::to_string(current().offsets.size()) +
                  (current().offsets.size() == 1 ? " number" : " numbers"));
    }
    stack_.pop_back();
    return true;
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) override {
    return fail(std::string("the header is not valid JSON: ") + ex.what());
  }

 private:
  enum class Ctx : uint8_t { Top, Tensor, Shape, Offsets, Metadata };

  Ctx context() const { return stack_.empty() ? Ctx::Top : stack_.back(); }
  HeaderEntry& current() { return entries.back(); }
  bool known_field() const { return field_ == "dtype" || field_ == "shape" || field_ == "data_offsets"; }
  bool push(Ctx c) {
    stack_.push_back(c);
    return true;
  }
  bool fail(const std::string& message) {
    if (error.empty()) error = message;
    return false;
  }

  std::string where_tensor() { return " of tensor " + quote(current().name); }

  // A value of the wrong kind for where it stands (or one to ignore).
  bool scalar(const std::string& got) {
    if (skip_ > 0) return true;
    if (stack_.empty()) return fail("the header is not a JSON object");
    switch (context()) {
      case Ctx::Top:
        if (key_ == "__metadata__") {
          if (got == "null" && !metadata_seen_) return metadata_seen_ = true, true;
          return fail("\"__metadata__\" must be an object of strings, got " + got);
        }
        return fail("the entry of tensor " + quote(key_) + " must be an object, got " + got);
      case Ctx::Tensor:
        if (field_ == "dtype") return fail("\"dtype\"" + where_tensor() + " must be a string, got " + got);
        if (field_ == "shape" || field_ == "data_offsets") {
          return fail("\"" + field_ + "\"" + where_tensor() + " must be an array of integers, got " + got);
        }
        return true;  // an unknown field
      case Ctx::Shape: return fail("\"shape\"" + where_tensor() + " must hold non-negative integers, got " + got);
      case Ctx::Offsets:
        return fail("\"data_offsets\"" + where_tensor() + " must hold non-negative integers, got " + got);
      case Ctx::Metadata:
        return fail("\"__metadata__\" value of key " + quote(meta_key_) + " must be a string, got " + got);
    }
    return false;
  }

  bool negative(int64_t v) { return scalar("the negative number " + std::to_string(v)); }

  bool unsigned_integer(uint64_t v) {
    if (skip_ > 0) return true;
    if (context() == Ctx::Shape) {
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return fail("\"shape\"" + where_tensor() + " has the dimension " + std::to_string(v) + ", too large");
      }
      if (current().shape.size() == kMaxShapeDims) {
        return fail("\"shape\"" + where_tensor() + " has more than " + std::to_string(kMaxShapeDims) + " dimensions");
      }
      current().shape.push_back(static_cast<int64_t>(v));
      return true;
    }
    if (context() == Ctx::Offsets) {
      if (current().offsets.size() == 2) {
        return fail("\"data_offsets\"" + where_tensor() + " must be [begin, end], got more than 2 numbers");
      }
      current().offsets.push_back(v);
      return true;
    }
    return scalar("the number " + std::to_string(v));
  }

  std::vector<Ctx> stack_;  // at most 3 deep: skipped values are counted in skip_ instead
  int64_t skip_ = 0;
  std::string key_, field_, meta_key_;
  std::unordered_set<std::string> names_;
  bool metadata_seen_ = false;
};

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

void read_exact(const std::string& path, FILE* f, void* dst, size_t bytes, const std::string& what) {
  if (bytes == 0) return;
  errno = 0;
  if (std::fread(dst, 1, bytes, f) != bytes) {
    if (std::ferror(f)) throw SafetensorsError(path, system_error("cannot read " + what, errno ? errno : EIO));
    throw SafetensorsError(path, "unexpected end of file while reading " + what);
  }
}

struct Planned {
  const HeaderEntry* entry;
  Stored stored;
  uint64_t begin, end;
};

}  // namespace

SafetensorsError::SafetensorsError(const std::string& path, const std::string& what)
    : std::runtime_error("safetensors: " + path + ": " + what), path_(path) {}

const Tensor& SafetensorsFile::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  throw SafetensorsError(path, "no tensor named " + quote(name) + " (the file has " + std::to_string(tensors.size()) +
                                   " tensors)");
}

bool SafetensorsFile::contains(const std::string& name) const {
  return std::any_of(tensors.begin(), tensors.end(), [&](const auto& p) { return p.first == name; });
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata, FloatStorage floats) {
  std::unordered_set<std::string> names;
  std::vector<OutTensor> order;
  order.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") throw SafetensorsError(path, "\"__metadata__\" is reserved and cannot name a tensor");
    if (!names.insert(name).second) throw SafetensorsError(path, "tensor name " + quote(name) + " appears twice");
    if (!tensor.defined()) throw SafetensorsError(path, "tensor " + quote(name) + " is undefined");
    Tensor host;
    try {
      host = tensor.detach().contiguous().to(Device::CPU);
    } catch (const std::exception& e) {
      throw SafetensorsError(path, "cannot copy tensor " + quote(name) + " to the host: " + e.what());
    }
    OutTensor out{&name, host, stored_as(host.dtype()), {}, 0};
    if (floats == FloatStorage::F16 && out.stored == Stored::F32) {
      out.stored = Stored::F16;
      const float* values = host.data<float>();
      out.halves.resize(static_cast<size_t>(host.numel()));
      for (size_t i = 0; i < out.halves.size(); ++i) out.halves[i] = float_to_half(values[i]);
    }
    out.bytes = static_cast<uint64_t>(host.numel()) * stored_size(out.stored);
    order.push_back(std::move(out));
  }
  std::sort(order.begin(), order.end(), [](const OutTensor& a, const OutTensor& b) {
    const int ra = dtype_rank(a.stored), rb = dtype_rank(b.stored);
    return ra != rb ? ra > rb : *a.name < *b.name;
  });
  const std::string header = make_header(path, order, metadata);

  const uint64_t header_len = header.size();  // little-endian, as the host
  std::vector<std::string_view> pieces = {{reinterpret_cast<const char*>(&header_len), sizeof header_len}, header};
  for (const OutTensor& t : order) pieces.emplace_back(static_cast<const char*>(t.data()), t.bytes);
  try {
    write_file_atomically(path, pieces);
  } catch (const FileWriteError& e) {
    throw SafetensorsWriteError(path, e.detail());
  }
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::unique_ptr<FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw SafetensorsError(path, system_error("cannot open", errno));
  struct stat st {};
  if (::fstat(::fileno(file.get()), &st) != 0) throw SafetensorsError(path, system_error("cannot stat", errno));
  if (!S_ISREG(st.st_mode)) throw SafetensorsError(path, "not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    throw SafetensorsError(path, "the file is " + std::to_string(file_size) +
                                     " bytes, too short for the 8-byte header length (truncated?)");
  }
  uint64_t header_len = 0;
  read_exact(path, file.get(), &header_len, sizeof header_len, "the header length");
  if (header_len > kMaxHeaderBytes) {
    throw SafetensorsError(path, "header length " + std::to_string(header_len) + " exceeds the limit of " +
                                     std::to_string(kMaxHeaderBytes) + " bytes (corrupt or not a safetensors file)");
  }
  if (header_len > file_size - 8) {
    throw SafetensorsError(path, "header length " + std::to_string(header_len) + " runs past the end of the " +
                                     std::to_string(file_size) + "-byte file (truncated or corrupt)");
  }
  std::string header(header_len, '\0');
  read_exact(path, file.get(), header.data(), header.size(), "the header");
  if (header.empty() || header[0] != '{') throw SafetensorsError(path, "the header does not start with '{'");

  HeaderReader reader;
  if (!nlohmann::json::sax_parse(header, &reader) || !reader.error.empty()) {
    throw SafetensorsError(path, reader.error.empty() ? "the header is not valid JSON" : reader.error);
  }
  header.clear();
  header.shrink_to_fit();

  // Validate every entry before allocating anything.
  const uint64_t data_size = file_size - 8 - header_len;
  std::vector<Planned> plan;
  plan.reserve(reader.entries.size());
  for (const HeaderEntry& e : reader.entries) {
    const std::string name = "tensor " + quote(e.name);
    Stored stored;
    if (!parse_dtype(e.dtype, &stored)) {
      throw SafetensorsError(path, name + " has dtype " + quote(e.dtype) +
                                       ", which polyak does not support (it reads F32, F16, I64, I32 and U8)");
    }
    // Every dimension counts, zeros too: a shape whose strides overflow is refused
    // even when it holds no element.
    int64_t extent = 1, numel = 1;
    for (int64_t d : e.shape) {
      if (__builtin_mul_overflow(extent, std::max<int64_t>(d, 1), &extent)) {
        throw SafetensorsError(path, name + " has shape " + shape_str(e.shape) + ", whose size overflows");
      }
      numel *= d;
    }
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(numel), static_cast<uint64_t>(stored_size(stored)), &bytes)) {
      throw SafetensorsError(path, name + " has shape " + shape_str(e.shape) + ", whose byte size overflows");
    }
    const uint64_t begin = e.offsets[0], end = e.offsets[1];
    const std::string offsets = "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]";
    if (begin > end) throw SafetensorsError(path, name + " has " + offsets + " with begin after end");
    if (end > data_size) {
      throw SafetensorsError(path, name + " has " + offsets + " past the end of the " + std::to_string(data_size) +
                                       "-byte data (truncated file?)");
    }
    if (end - begin != bytes) {
      throw SafetensorsError(path, name + " is " + st_dtype_name(stored) + " of shape " + shape_str(e.shape) + ", " +
                                       std::to_string(bytes) + " bytes, but its " + offsets + " span " +
                                       std::to_string(end - begin) + " bytes");
    }
    plan.push_back({&e, stored, begin, end});
  }
  std::stable_sort(plan.begin(), plan.end(), [](const Planned& a, const Planned& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  const Planned* previous = nullptr;
  for (const Planned& p : plan) {
    if (p.begin < pos) {
      throw SafetensorsError(path, "the data of tensor " + quote(p.entry->name) + " [" + std::to_string(p.begin) +
                                       ", " + std::to_string(p.end) + ") overlaps tensor " +
                                       quote(previous->entry->name) + ", which ends at " + std::to_string(pos));
    }
    if (p.begin > pos) {
      throw SafetensorsError(path, "bytes [" + std::to_string(pos) + ", " + std::to_string(p.begin) +
                                       ") of the data belong to no tensor (a hole before tensor " +
                                       quote(p.entry->name) + ")");
    }
    pos = p.end;
    previous = &p;
  }
  if (pos != data_size) {
    throw SafetensorsError(path, "the tensors cover " + std::to_string(pos) + " bytes of data but the file holds " +
                                     std::to_string(data_size) + " (trailing bytes)");
  }

  SafetensorsFile out;
  out.path = path;
  out.metadata = std::move(reader.metadata);
  out.tensors.reserve(plan.size());
  for (const Planned& p : plan) {
    Tensor t = Tensor::empty(p.entry->shape, memory_dtype(p.stored));
    const std::string what = "tensor " + quote(p.entry->name);
    if (p.stored == Stored::F16) {  // widened to float32, exactly
      std::vector<uint16_t> halves(static_cast<size_t>(t.numel()));
      read_exact(path, file.get(), halves.data(), p.end - p.begin, what);
      float* values = t.data<float>();
      for (size_t i = 0; i < halves.size(); ++i) values[i] = half_to_float(halves[i]);
    } else {
      read_exact(path, file.get(), t.raw_data(), p.end - p.begin, what);
    }
    out.tensors.emplace_back(p.entry->name, std::move(t));
  }
  return out;
}

}  // namespace polyak::io
