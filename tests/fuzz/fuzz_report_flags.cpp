// The report app's command line: CLI11 parsing into ReportConfig, the output file it
// names and the check of that file's folder, all before any run folder is read. See
// fuzz_flags.h.
#include "apps/report/report.h"
#include "fuzz_flags.h"

using namespace polyak;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CLI::App app{"polyak report"};
  app::ReportConfig config;
  app::add_report_flags(app, config);
  fuzz::fuzz_command_line("report", app, data, size, [&] {
    fuzz::require(!config.output_file().empty(), "a report always has a file to go to");
    app::check_output_file("--output", config.output);
    return 0;
  });
  return 0;
}
