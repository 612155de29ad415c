// The phema app's command line: CLI11 parsing into PhemaConfig and validate(), which
// run_phema does before it reads a snapshot. See fuzz_flags.h.
#include "apps/phema/phema.h"
#include "fuzz_flags.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  polyak::fuzz::fuzz_validated_flags("phema", data, size, polyak::app::add_phema_flags);
  return 0;
}
