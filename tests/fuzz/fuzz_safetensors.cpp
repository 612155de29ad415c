// The safetensors reader (engine/io/safetensors.cpp): the input is the file. A
// SafetensorsError is the reader rejecting it; anything else escaping, a broken
// invariant or a sanitizer report is a bug. A file the reader accepts must also survive
// save -> load unchanged (names, metadata, shapes, dtypes and bytes), since checkpoints
// are written back out by the same code.
#include <cstring>

#include "engine/io/safetensors.h"
#include "fuzz_support.h"

namespace fs = std::filesystem;
using namespace polyak;

namespace {

size_t byte_size(const Tensor& t) { return static_cast<size_t>(t.numel()) * dtype_size(t.dtype()); }

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         (byte_size(a) == 0 || std::memcmp(a.raw_data(), b.raw_data(), byte_size(a)) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path file = fuzz::scratch_dir() / "in.safetensors";
  const fs::path copy = fuzz::scratch_dir() / "copy.safetensors";
  fuzz::write_file(file, data, size);
  try {
    const io::SafetensorsFile loaded = io::load_safetensors(file.string());
    size_t total = 0;
    for (const auto& [name, tensor] : loaded.tensors) {
      fuzz::require(tensor.device() == Device::CPU && tensor.is_contiguous(), "tensors are contiguous, on the CPU");
      fuzz::require(loaded.contains(name) && &loaded.at(name) == &tensor, "at(name) finds each tensor");
      total += byte_size(tensor);
    }
    fuzz::require(total <= size, "the tensors' bytes fit in the file");

    io::save_safetensors(copy.string(), loaded.tensors, loaded.metadata);
    const io::SafetensorsFile again = io::load_safetensors(copy.string());
    fuzz::require(again.metadata == loaded.metadata, "save -> load keeps the metadata");
    fuzz::require(again.tensors.size() == loaded.tensors.size(), "save -> load keeps every tensor");
    for (const auto& [name, tensor] : loaded.tensors) {
      fuzz::require(again.contains(name) && same_bytes(again.at(name), tensor), "save -> load keeps each tensor");
    }
  } catch (const io::SafetensorsError&) {
  }
  fs::remove(file);
  fs::remove(copy);
  return 0;
}
