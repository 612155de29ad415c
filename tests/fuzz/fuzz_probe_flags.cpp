// The probe app's command line: CLI11 parsing into ProbeConfig and validate(), which
// run_probe does before it reads a checkpoint or data. See fuzz_flags.h.
#include "apps/probe/probe.h"
#include "fuzz_flags.h"

using namespace polyak;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CLI::App app{"polyak probe"};
  app::ProbeConfig config;
  app::add_probe_flags(app, config);
  fuzz::fuzz_command_line("probe", app, data, size, [&] {
    config.validate();
    return 0;
  });
  return 0;
}
