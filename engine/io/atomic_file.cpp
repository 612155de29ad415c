#include "engine/io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace polyak::io {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kTempMarker = ".tmp.";

[[noreturn]] void fail(const std::string& path, const std::string& what, int err) {
  throw FileWriteError(path, what + ": " + std::strerror(err));
}
// Call right after the failed system call: errno is read before `what` is built.
#define fail_errno(path, what)   \
  do {                           \
    const int err_ = errno;      \
    fail(path, what, err_);      \
  } while (0)

// The write that POLYAK_FAULT_KILL_IN_WRITE selects (0: none), and how many this process began.
int fault_write_number() {
  static const int n = [] {
    const char* value = std::getenv("POLYAK_FAULT_KILL_IN_WRITE");
    return value ? std::atoi(value) : 0;
  }();
  return n;
}
std::atomic<int> writes_begun{0};

// Owns the temporary file until it has been renamed: closes it, and removes it unless committed.
class TempFile {
 public:
  explicit TempFile(std::string name) : name_(std::move(name)) {}
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(name_.c_str());
  }
  const std::string& name() const { return name_; }

  void open(const std::string& target) {
    fd_ = ::open(name_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail_errno(target, "cannot create " + name_);
  }
  void write(const std::string& target, std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail_errno(target, "cannot write " + name_);
      bytes.remove_prefix(static_cast<size_t>(n));
    }
  }
  void sync_and_close(const std::string& target) {
    if (::fsync(fd_) != 0) fail_errno(target, "cannot sync " + name_);
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail_errno(target, "cannot close " + name_);  // NFS reports write errors here
  }
  void commit() { committed_ = true; }

 private:
  std::string name_;
  int fd_ = -1;
  bool committed_ = false;
};

// After the rename the new file is in place; this makes the rename itself durable.
void sync_directory(const std::string& path) {
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_errno(path, "file written, but cannot open its directory " + dir.string() + " to sync it");
  if (::fsync(fd) != 0 && errno != EINVAL && errno != EROFS) {  // some file systems cannot sync directories
    const int err = errno;
    ::close(fd);
    fail(path, "file written, but syncing its directory " + dir.string() + " failed", err);
  }
  ::close(fd);
}

}  // namespace

void write_file_atomically(const std::string& path, const std::vector<std::string_view>& pieces) {
  const bool kill_midway = ++writes_begun == fault_write_number();
  TempFile tmp(path + std::string(kTempMarker) + std::to_string(::getpid()));
  tmp.open(path);
  if (kill_midway) {
    size_t total = 0;
    for (std::string_view piece : pieces) total += piece.size();
    size_t half = total / 2;
    for (std::string_view piece : pieces) {
      const size_t n = std::min(half, piece.size());
      tmp.write(path, piece.substr(0, n));
      half -= n;
    }
    std::raise(SIGKILL);
  }
  for (std::string_view piece : pieces) tmp.write(path, piece);
  tmp.sync_and_close(path);
  if (std::rename(tmp.name().c_str(), path.c_str()) != 0) fail_errno(path, "cannot rename " + tmp.name() + " over it");
  tmp.commit();
  sync_directory(path);
}

bool is_temp_file_name(const std::string& name) {
  const size_t marker = name.rfind(kTempMarker);
  if (marker == std::string::npos || marker == 0) return false;
  const std::string pid = name.substr(marker + kTempMarker.size());
  return !pid.empty() && std::all_of(pid.begin(), pid.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::vector<std::string> remove_stale_temp_files(const std::string& dir) {
  const std::string own_suffix = std::string(kTempMarker) + std::to_string(::getpid());
  std::vector<std::string> removed;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file(ec) || !is_temp_file_name(name)) continue;
    if (name.size() > own_suffix.size() && name.compare(name.size() - own_suffix.size(), own_suffix.size(), own_suffix) == 0)
      continue;  // this process's own write in progress
    if (fs::remove(entry.path(), ec)) removed.push_back(name);
  }
  std::sort(removed.begin(), removed.end());
  return removed;
}

}  // namespace polyak::io
