// Replacing a file atomically, so that a reader, or a run resumed after a crash or a
// kill, finds either the old file or the complete new one, never a mix of the two.
//
// The bytes go to a temporary file "<path>.tmp.<pid>" beside the target (the same file
// system, so that the rename cannot copy), are fsync'ed, and the temporary file is
// renamed over `path`; then the directory is fsync'ed so that the rename itself
// survives a power cut. A failed write (a full disk: ENOSPC, EFBIG, EIO) removes the
// temporary file and leaves the file already at `path` as it was. A process killed
// during a write leaves its temporary file behind: remove_stale_temp_files() clears
// those when the next process starts on the same folder.
//
// Test hook: with the environment variable POLYAK_FAULT_KILL_IN_WRITE=N the process
// kills itself (SIGKILL) in the middle of its N-th atomic write: after the first half
// of the bytes reached the temporary file, before the rest, the sync and the rename.
// The crash-safety tests use it to kill a training run inside a checkpoint write.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace polyak::io {

// A failed write; what() is "<path>: <detail>", the detail saying which step failed
// and the system's reason ("cannot write x.tmp.12: No space left on device").
class FileWriteError : public std::runtime_error {
 public:
  FileWriteError(const std::string& path, const std::string& detail)
      : std::runtime_error(path + ": " + detail), detail_(detail) {}
  const std::string& detail() const { return detail_; }

 private:
  std::string detail_;
};

// Writes the concatenation of `pieces` to `path` as described above.
void write_file_atomically(const std::string& path, const std::vector<std::string_view>& pieces);
inline void write_file_atomically(const std::string& path, std::string_view text) {
  write_file_atomically(path, std::vector<std::string_view>{text});
}

// Whether a file name is that of a temporary file of write_file_atomically ("x.tmp.123").
bool is_temp_file_name(const std::string& name);

// Removes the temporary files that killed writers left in `dir` (not those of this
// process) and returns their names.
std::vector<std::string> remove_stale_temp_files(const std::string& dir);

}  // namespace polyak::io
