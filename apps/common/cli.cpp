#include "apps/common/cli.h"

#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "data/error.h"
#include "engine/backend.h"
#include "engine/io/atomic_file.h"
#include "engine/io/safetensors.h"

namespace polyak::app {

void bad_flag(const std::string& flag, const std::string& value, const std::string& expected) {
  throw std::invalid_argument(flag + " " + value + ": expected " + expected);
}

std::string number_str(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

bool is_utf8(std::string_view text) {
  // A lead byte 110xxxxx, 1110xxxx or 11110xxx starts a sequence of 2, 3 or 4 bytes whose
  // other bytes are 10xxxxxx; the code point must need that many bytes (no overlong form).
  constexpr uint32_t kSmallest[] = {0, 0x80, 0x800, 0x10000};
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    size_t more = 0;
    uint32_t code = lead;
    if (lead >= 0x80) {
      if ((lead & 0xE0) == 0xC0) more = 1, code = lead & 0x1F;
      else if ((lead & 0xF0) == 0xE0) more = 2, code = lead & 0x0F;
      else if ((lead & 0xF8) == 0xF0) more = 3, code = lead & 0x07;
      else return false;
      if (text.size() - i <= more) return false;
      for (size_t k = 1; k <= more; ++k) {
        const auto next = static_cast<unsigned char>(text[i + k]);
        if ((next & 0xC0) != 0x80) return false;
        code = (code << 6) | (next & 0x3F);
      }
      if (code < kSmallest[more] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    }
    i += more + 1;
  }
  return true;
}

void require_file(const std::string& what, const std::string& path) {
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(path, ec);
  if (status.type() == std::filesystem::file_type::regular) return;
  const std::string why = status.type() == std::filesystem::file_type::not_found ? "no such file"
                          : ec                                                   ? ec.message()
                                                                                 : "not a file";
  throw std::invalid_argument(what + " " + path + ": " + why);
}

bool is_folder(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec);
}

Device device_from_flag(const std::string& value) {
  if (value != "cpu" && value != "cuda") bad_flag("--device", value, "cpu or cuda");
  const Device device = value == "cuda" ? Device::CUDA : Device::CPU;
  if (!device_available(device))
    throw std::invalid_argument("--device " + value + ": not available (this build has no CUDA support or no GPU is present)");
  return device;
}

namespace {

// Why no file can be written in the existing folder `dir` (strerror), or "" when one can.
// A real file is created, written and removed: permissions, read-only mounts, quotas
// and a full disk all show here, before hours of work are lost to them.
std::string unwritable_reason(const std::string& dir) {
  const std::string probe = (std::filesystem::path(dir) / (".polyak-write-test." + std::to_string(::getpid()))).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return std::strerror(errno);
  int err = ::write(fd, "polyak\n", 7) == 7 ? 0 : errno ? errno : EIO;
  if (::close(fd) != 0 && !err) err = errno;
  ::unlink(probe.c_str());
  return err ? std::strerror(err) : "";
}

}  // namespace

void prepare_output_folder(const std::string& flag, const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw std::invalid_argument(flag + " " + dir + ": cannot create the folder: " + ec.message());
  if (!std::filesystem::is_directory(dir, ec)) throw std::invalid_argument(flag + " " + dir + ": not a folder");
  if (const std::string why = unwritable_reason(dir); !why.empty())
    throw std::invalid_argument(flag + " " + dir + ": cannot write in the folder: " + why);
}

void check_output_file(const std::string& flag, const std::string& path) {
  if (path.empty() || path == "-") return;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty() && !is_folder(parent.string())) bad_flag(flag, path, "a file in an existing folder");
  if (is_folder(path)) bad_flag(flag, path, "a file name, not a folder");
  const std::string dir = parent.empty() ? "." : parent.string();
  if (const std::string why = unwritable_reason(dir); !why.empty())
    throw std::invalid_argument(flag + " " + path + ": cannot write in its folder " + dir + ": " + why);
}

void write_output(const std::string& flag, const std::string& target, const std::string& text) {
  if (target == "-") {
    std::fputs(text.c_str(), stdout);
    return;
  }
  try {
    io::write_file_atomically(target, text);
  } catch (const io::FileWriteError& e) {
    throw io::FileWriteError(target, flag + ": " + e.detail());
  }
}

namespace {

// The words of the command line that made parsing throw something other than CLI11's
// own ParseError (a conversion inside CLI11, such as std::stoll on a flag's value, or a
// callback of ours), found by parsing ever longer prefixes of argv until one throws:
// its last word, with the word before it when the last is a value ("--epochs 1e999").
// "" when no prefix throws on its own.
std::string failing_words(CLI::App& app, int argc, char** argv) {
  for (int words = 2; words <= argc; ++words) {
    try {
      app.parse(words, argv);
    } catch (const CLI::ParseError&) {  // e.g. a required argument not reached yet
    } catch (const std::exception&) {
      const std::string last = argv[words - 1];
      return words > 2 && (last.empty() || last[0] != '-') ? std::string(argv[words - 2]) + " " + last : last;
    }
  }
  return "";
}

// What a standard exception says of a value, in words: std::stoll's "stoll" alone does
// not tell a user that the number is too large.
std::string value_problem(const std::exception& e) {
  if (dynamic_cast<const std::out_of_range*>(&e)) return std::string("out of range (") + e.what() + ")";
  if (dynamic_cast<const std::invalid_argument*>(&e)) return std::string("not a valid value (") + e.what() + ")";
  return e.what();
}

}  // namespace

int run_app(const char* name, CLI::App& app, int argc, char** argv, const std::function<int()>& body) {
  // CLI11 reports what it checks as a ParseError; anything else thrown while parsing
  // (CLI11 2.1 lets std::stoll's std::out_of_range out of "--no-flag=<huge number>")
  // is a bad value too: one line naming the words that caused it, exit code 2.
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints --help, or the parse error naming the flag
    return code == 0 ? 0 : 2;
  } catch (const std::exception& e) {
    const std::string problem = value_problem(e);
    const std::string words = failing_words(app, argc, argv);
    std::fprintf(stderr, "%s: %s%s\n", name, words.empty() ? "" : (words + ": ").c_str(), problem.c_str());
    return 2;
  }
  try {
    return body();
  } catch (const std::exception& e) {
    const int code = exit_code_of(e);
    const bool agreed = dynamic_cast<const AgreedError*>(&e) != nullptr;
    dist::Communicator& ranks = dist::world();
    if (!agreed || ranks.rank() == 0) std::fprintf(stderr, "%s: %s\n", name, e.what());
    if (!agreed && ranks.size() > 1) {
      std::fflush(nullptr);
      ranks.abort(code);
    }
    return code;
  }
}

int exit_code_of(const std::exception& e) {
  if (const auto* app_error = dynamic_cast<const AppError*>(&e)) return app_error->exit_code;
  if (dynamic_cast<const std::invalid_argument*>(&e) || dynamic_cast<const data::DataError*>(&e)) return 2;
  if (dynamic_cast<const io::SafetensorsWriteError*>(&e)) return 1;
  if (dynamic_cast<const io::SafetensorsError*>(&e)) return 2;
  return 1;
}

void run_on_every_rank(dist::Communicator& ranks, const std::function<void()>& setup) {
  dist::RankError mine;
  try {
    setup();
  } catch (const std::exception& e) {
    if (ranks.size() == 1) throw;
    mine = {exit_code_of(e), e.what()};
    if (mine.code == 0) mine.code = 1;
  }
  const dist::RankError first = dist::first_error(ranks, mine);
  if (first.code != 0) throw AgreedError(first.message, first.code);
}

}  // namespace polyak::app
