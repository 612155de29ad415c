// report: turns a run folder written by train (or several, for seeds) into one
// self-contained HTML page with SVG plots. See report.h for what it reads.
//   report RUN                       writes RUN/report.html
//   report RUN1 RUN2 RUN3 -o FILE    mean over the runs with min-max bands
// Exit codes: 0 done, 2 bad arguments or unreadable run folders, 1 other errors.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "apps/common/cli.h"
#include "apps/report/report.h"

int main(int argc, char** argv) {
  using namespace polyak::app;
  CLI::App app{"polyak report: an HTML page with the plots and the selected models of one or more runs"};
  ReportConfig config;
  add_report_flags(app, config);
  return run_app("report", app, argc, argv, [&] {
    const std::string output = config.output_file();
    check_output_file("--output", config.output);  // before the work; "" (the default) passes
    write_report(config.runs, output);
    std::printf("report: %s\n", output.c_str());
    return 0;
  });
}
