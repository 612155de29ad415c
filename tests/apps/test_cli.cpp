// run_app, in-process: whatever parsing throws is a bad flag (exit code 2) and the app's
// work never starts; CLI11's own parse errors and --help keep their codes.
#include <doctest/doctest.h>

#include <CLI/CLI.hpp>

#include <stdexcept>
#include <string>
#include <vector>

#include "apps/common/cli.h"

namespace {

// Runs `words` (after the program name) through an app with an option --n and an
// option --far whose callback throws std::out_of_range, as CLI11's own std::stoll can.
int run(std::vector<std::string> words, bool& worked) {
  CLI::App app{"test"};
  int n = 0;
  app.add_option("--n", n);
  app.add_option_function<std::string>("--far", [](const std::string& v) { throw std::out_of_range("stoll " + v); });
  words.insert(words.begin(), "test");
  std::vector<char*> argv;
  for (std::string& w : words) argv.push_back(w.data());
  worked = false;
  return polyak::app::run_app("test", app, static_cast<int>(words.size()), argv.data(), [&] {
    worked = true;
    return 0;
  });
}

}  // namespace

TEST_CASE("run_app: an exception escaping the parser is a bad flag, exit code 2, and the work never starts") {
  bool worked = false;
  CHECK(run({"--n", "3"}, worked) == 0);
  CHECK(worked);
  CHECK(run({"--n", "3", "--far", "x"}, worked) == 2);
  CHECK(!worked);
  CHECK(run({"--far=1", "--n", "3"}, worked) == 2);
  CHECK(!worked);
  CHECK(run({"--n", "three"}, worked) == 2);  // CLI11's own ConversionError
  CHECK(!worked);
  CHECK(run({"--help"}, worked) == 0);
  CHECK(!worked);
}
