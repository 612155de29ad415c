// metrics.jsonl as the tests compare it: the results of a run, which a resumed run
// must reproduce byte for byte, without the train rows' "memory", which measures the
// process that wrote the row.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <sstream>
#include <string>

#include "support/temp_dir.h"

namespace polyak::testing {

// Every row of the file, re-serialised without its "memory" object; "" when the file
// cannot be read.
inline std::string metrics_results(const std::filesystem::path& path) {
  std::istringstream lines(read_file(path));
  std::string line, results;
  while (std::getline(lines, line)) {
    nlohmann::ordered_json row = nlohmann::ordered_json::parse(line);
    row.erase("memory");
    results += row.dump() + "\n";
  }
  return results;
}

}  // namespace polyak::testing
