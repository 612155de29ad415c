// phema: post-hoc EMA, averages of any length rebuilt from a run's power-average
// snapshots, evaluated with and without BN recompute. See apps/phema/phema.h.
//   train --phema 0.05,0.10 ... --output runs/x
//   phema runs/x --sigma-rel 0.05,0.08,0.13 --ema 0.998@1
// Exit codes: 0 done, 2 bad flags or input (or every target refused), 1 other errors.
#include <CLI/CLI.hpp>

#include "apps/common/cli.h"
#include "apps/phema/phema.h"

int main(int argc, char** argv) {
  using namespace polyak::app;
  CLI::App app{"polyak phema: rebuild averages of any length from a run's power-average snapshots (post-hoc EMA)"};
  PhemaConfig config;
  add_phema_flags(app, config);
  return run_app("phema", app, argc, argv, [&] { return run_phema(config); });
}
