// eval: evaluates checkpoints on a dataset split with the EMA paper's metrics
// (accuracy, NLL, ECE in two binnings, before and after temperature scaling; churn and
// JS divergence between models). See apps/eval/eval.h.
//   eval runs/x/model.safetensors runs/y/model.safetensors --val-split 0.2 --json out.json
//   eval runs/x/last.safetensors --ema all --bn-recompute on
// Exit codes: 0 done, 2 bad flags or input (files, data, checkpoints), 1 other errors.
#include <CLI/CLI.hpp>

#include "apps/common/cli.h"
#include "apps/eval/eval.h"

int main(int argc, char** argv) {
  using namespace polyak::app;
  CLI::App app{"polyak eval: evaluate checkpoints (accuracy, NLL, ECE, temperature scaling, churn, JS divergence)"};
  EvalConfig config;
  add_eval_flags(app, config);
  return run_app("eval", app, argc, argv, [&] { return run_eval(config); });
}
