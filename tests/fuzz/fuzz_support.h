// What the fuzz targets share: the readers under test take paths, so each input is
// written to a file in a scratch folder of this process (under TMPDIR; tests/fuzz/run.sh
// points that at its own temporary folder), and a broken invariant is a crash that
// libFuzzer records with the input that caused it.
#pragma once

#include <sanitizer/common_interface_defs.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "support/temp_dir.h"

namespace polyak::fuzz {

// The scratch folder, created on first use and removed when the process exits normally.
inline const std::filesystem::path& scratch_dir() {
  static const testing::TempDir dir("polyak_fuzz");
  return dir.path;
}

// Prints `message` where the sanitizers report (stderr, or the copy of it that libFuzzer
// keeps when -close_fd_mask closes the real one) and aborts: libFuzzer records a crash.
[[noreturn]] inline void fail(const std::string& message) {
  __sanitizer_report_error_summary(("fuzz: " + message).c_str());
  std::abort();
}

inline void write_file(const std::filesystem::path& path, const uint8_t* data, size_t size) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!file.flush()) fail("cannot write " + path.string());
}

// A reader accepted the input but broke a promise of its header.
inline void require(bool ok, const char* promise) {
  if (!ok) fail(std::string("broken invariant: ") + promise);
}

}  // namespace polyak::fuzz
