// report: turns a run folder written by train (or several, for seeds) into one
// self-contained HTML page with SVG plots. See report.h for what it reads.
//   report RUN                       writes RUN/report.html
//   report RUN1 RUN2 RUN3 -o FILE    mean over the runs with min-max bands
// Exit codes: 0 done, 2 bad arguments or unreadable run folders, 1 other errors.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>

#include "apps/report/report.h"

int main(int argc, char** argv) {
  CLI::App app{"polyak report: an HTML page with the plots and the selected models of one or more runs"};
  std::vector<std::string> runs;
  std::string output;
  app.add_option("runs", runs, "run folders (several: seeds of one configuration)")->required();
  app.add_option("-o,--output", output, "the HTML file to write (default: FIRST_RUN/report.html)");
  CLI11_PARSE(app, argc, argv);
  if (output.empty()) output = (std::filesystem::path(runs.front()) / "report.html").string();
  try {
    polyak::app::write_report(runs, output);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "report: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "report: %s\n", e.what());
    return 1;
  }
  std::printf("report: %s\n", output.c_str());
  return 0;
}
