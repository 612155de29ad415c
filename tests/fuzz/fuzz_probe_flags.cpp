// The probe app's command line: CLI11 parsing into ProbeConfig and validate(), which
// run_probe does before it reads a checkpoint or data. See fuzz_flags.h.
#include "apps/probe/probe.h"
#include "fuzz_flags.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  polyak::fuzz::fuzz_validated_flags("probe", data, size, polyak::app::add_probe_flags);
  return 0;
}
