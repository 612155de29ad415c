// Checkpoints in the safetensors format (Hugging Face), so weights move to and from
// the Python ecosystem without a converter.
//
// A file is: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON, then the data.
// The JSON object maps each tensor name to {"dtype", "shape", "data_offsets": [begin,
// end]} (byte offsets into the data that follows the header) and may hold a
// "__metadata__" object of string -> string. Tensors are stored row-major, contiguous,
// little-endian; together their byte ranges cover the data exactly, with no hole and
// no overlap. The writer lays the file out as the reference library does: the header
// padded with spaces to a multiple of 8 bytes so that the data starts 8-byte aligned,
// "__metadata__" first, then the tensors by descending dtype width (I64, F32, I32, F16, U8)
// and by name within a dtype, their data in that same order (which keeps every tensor
// aligned to its element size).
//
// Writes are atomic (engine/io/atomic_file.h): the bytes go to `path.tmp.<pid>` beside
// the target, are fsync'ed, and the temporary file is renamed over `path` (then the
// directory is fsync'ed). A failed save removes the temporary file and leaves any file
// already at `path` as it was.
//
// The reader validates the whole header before it allocates a tensor, so a damaged or
// hostile file gives a SafetensorsError naming the file and the problem, never a crash
// or an allocation larger than the file.
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace polyak::io {

// Every message starts with "safetensors: <path>: ".
class SafetensorsError : public std::runtime_error {
 public:
  SafetensorsError(const std::string& path, const std::string& what);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A save that failed at the system level (a full disk, a missing folder): the message
// names the file and the system's reason. Unlike a damaged file it is no bad input.
class SafetensorsWriteError : public SafetensorsError {
 public:
  using SafetensorsError::SafetensorsError;
};

struct SafetensorsFile {
  std::string path;                                     // where it was read from
  std::vector<std::pair<std::string, Tensor>> tensors;  // in the order of their data, on the CPU
  std::map<std::string, std::string> metadata;

  // Throws SafetensorsError naming `name` and the file when there is no such tensor.
  const Tensor& at(const std::string& name) const;
  bool contains(const std::string& name) const;
};

// How float32 tensors are stored: as they are, or as F16 (IEEE half, rounded to
// nearest even: half the bytes, about 3 significant digits; engine/io/half.h).
enum class FloatStorage { F32, F16 };

// Tensors may live on any device and be non-contiguous views. Names must be unique and
// must not be "__metadata__". Throws SafetensorsError naming the path on any failure:
// SafetensorsWriteError, with strerror(errno), when the system refuses the write.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      FloatStorage floats = FloatStorage::F32);

// Reads F32, F16, I64, I32 and U8 tensors of at most 64 dimensions (F16 widened to
// float32 tensors, exactly); any other dtype is reported as unsupported.
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace polyak::io
