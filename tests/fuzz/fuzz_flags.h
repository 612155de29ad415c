// What the command-line fuzz targets share: the input is split into argv words at
// whitespace and parsed by an app's own flags through run_app, whose body is what the
// app does with the flags before it touches any data (resolve, validate). run_app turns
// bad flags into exit code 2 (and --help into 0); any other exit code, an exception
// escaping, or a sanitizer report is a bug.
//
// The targets run in the scratch folder, which holds an empty file "c.safetensors": a
// checkpoint argument that exists, so that the checks after "no such file" are reached
// (the seed corpora name it).
#pragma once

#include <CLI/CLI.hpp>

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "apps/common/cli.h"
#include "fuzz_support.h"

namespace polyak::fuzz {

inline std::vector<std::string> split_words(const char* program, const uint8_t* data, size_t size) {
  std::vector<std::string> words = {program};
  std::string word;
  for (size_t i = 0; i <= size; ++i) {
    const char c = i < size ? static_cast<char>(data[i]) : ' ';
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\0') {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word += c;
    }
  }
  return words;
}

// Runs `app` (flags already added) on the input as `program`'s command line, with
// `body` as the work after parsing, and requires exit code 0 or 2.
inline void fuzz_command_line(const char* program, CLI::App& app, const uint8_t* data, size_t size,
                              const std::function<int()>& body) {
  static const bool in_scratch = [] {
    std::ofstream(scratch_dir() / "c.safetensors").flush();
    return ::chdir(scratch_dir().c_str()) == 0;
  }();
  require(in_scratch, "the scratch folder is the working directory");
  std::vector<std::string> words = split_words(program, data, size);
  std::vector<char*> argv;
  for (std::string& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  const int code = app::run_app(program, app, static_cast<int>(words.size()), argv.data(), body);
  require(code == 0 || code == 2, "flags are accepted (0) or reported as bad flags (2)");
}

// The common case: an app whose flags bind a Config that has validate(), the checks
// the app makes before it reads anything (eval, probe).
template <class Config>
void fuzz_validated_flags(const char* program, const uint8_t* data, size_t size,
                          void (*add_flags)(CLI::App&, Config&)) {
  CLI::App app{program};
  Config config;
  add_flags(app, config);
  fuzz_command_line(program, app, data, size, [&] {
    config.validate();
    return 0;
  });
}

}  // namespace polyak::fuzz
