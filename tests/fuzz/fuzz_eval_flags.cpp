// The eval app's command line: CLI11 parsing into EvalConfig and validate(), which
// run_eval does before it reads a checkpoint or data. See fuzz_flags.h.
#include "apps/eval/eval.h"
#include "fuzz_flags.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  polyak::fuzz::fuzz_validated_flags("eval", data, size, polyak::app::add_eval_flags);
  return 0;
}
