// The eval app's command line: CLI11 parsing into EvalConfig and validate(), which
// run_eval does before it reads a checkpoint or data. See fuzz_flags.h.
#include "apps/eval/eval.h"
#include "fuzz_flags.h"

using namespace polyak;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CLI::App app{"polyak eval"};
  app::EvalConfig config;
  app::add_eval_flags(app, config);
  fuzz::fuzz_command_line("eval", app, data, size, [&] {
    config.validate();
    return 0;
  });
  return 0;
}
