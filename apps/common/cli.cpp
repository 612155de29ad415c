#include "apps/common/cli.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "data/error.h"
#include "engine/backend.h"
#include "engine/io/safetensors.h"

namespace polyak::app {

void bad_flag(const std::string& flag, const std::string& value, const std::string& expected) {
  throw std::invalid_argument(flag + " " + value + ": expected " + expected);
}

std::string number_str(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

Device device_from_flag(const std::string& value) {
  if (value != "cpu" && value != "cuda") bad_flag("--device", value, "cpu or cuda");
  const Device device = value == "cuda" ? Device::CUDA : Device::CPU;
  if (!device_available(device))
    throw std::invalid_argument("--device " + value + ": not available (this build has no CUDA support or no GPU is present)");
  return device;
}

void write_output(const std::string& flag, const std::string& target, const std::string& text) {
  if (target == "-") {
    std::fputs(text.c_str(), stdout);
    return;
  }
  std::ofstream file(target, std::ios::trunc);
  file << text;
  file.flush();
  if (!file) throw std::invalid_argument(flag + " " + target + ": cannot write the file");
}

int run_app(const char* name, CLI::App& app, int argc, char** argv, const std::function<int()>& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints --help, or the parse error naming the flag
    return code == 0 ? 0 : 2;
  }
  const auto fail = [name](const std::exception& e, int code) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return code;
  };
  try {
    return body();
  } catch (const AppError& e) {
    return fail(e, e.exit_code);
  } catch (const std::invalid_argument& e) {
    return fail(e, 2);
  } catch (const data::DataError& e) {
    return fail(e, 2);
  } catch (const io::SafetensorsError& e) {
    return fail(e, 2);
  } catch (const std::exception& e) {
    return fail(e, 1);
  }
}

}  // namespace polyak::app
