// The bench app's command line: CLI11 parsing into its Options and resolve(), which
// checks the device and the worker's threads before any child process starts. See
// fuzz_flags.h.
#include "apps/bench/options.h"
#include "fuzz_flags.h"

using namespace polyak;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CLI::App app{"polyak bench"};
  bench::Options options;
  bench::add_bench_flags(app, options);
  fuzz::fuzz_command_line("bench", app, data, size, [&] {
    options.resolve(app.count("--threads") > 0);
    fuzz::require(!options.threads.empty(), "at least one thread count to measure");
    return 0;
  });
  return 0;
}
