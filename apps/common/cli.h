// What every app's command line shares: the error conventions and the main() frame.
//
// Exit codes: 0 done; 2 a bad flag or bad input (a value out of range, a missing or
// corrupt data file or checkpoint, an output folder that cannot be written), reported
// as one line naming the value and what is expected; a subclass of AppError may choose
// its own code (the train app uses 3 for a diverged run); 1 anything else, e.g. a disk
// that fills up during a run (the message names the file and the system's reason).
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

#include "engine/distributed.h"
#include "engine/tensor.h"

namespace CLI {
class App;
}

namespace polyak::app {

// An error with its own exit code.
struct AppError : std::runtime_error {
  AppError(const std::string& what, int exit_code) : std::runtime_error(what), exit_code(exit_code) {}
  int exit_code;
};

// An error every rank of a data-parallel job has agreed on (run_on_every_rank): each
// rank ends with its code, and only rank 0 prints it. Any other error on one rank of a
// job of several prints its line and ends the whole job (MPI_Abort), so that no rank
// waits forever for a message that will not come.
struct AgreedError : AppError {
  using AppError::AppError;
};

// The exit code run_app gives an exception (see the top of this file).
int exit_code_of(const std::exception& e);

// Runs `setup` (reading data and checkpoints, preparing the output) on every rank of
// `ranks` and agrees on the outcome: when it failed on some rank, every rank throws
// AgreedError with the first failing rank's message and exit code.
void run_on_every_rank(dist::Communicator& ranks, const std::function<void()>& setup);

// Throws std::invalid_argument "<flag> <value>: expected <expected>".
[[noreturn]] void bad_flag(const std::string& flag, const std::string& value, const std::string& expected);
// A number as the user would write it ("0.1", "1e-05").
std::string number_str(double value);
// Whether `text` is well-formed UTF-8 (no stray continuation bytes, overlong forms,
// surrogates or code points past U+10FFFF). Paths that go into a JSON file must be:
// JSON text is Unicode, and a Linux path may be any bytes.
bool is_utf8(std::string_view text);

// Checks that `path` names a regular file; std::invalid_argument "<what> <path>: <why>"
// otherwise ("no such file", "not a file", or the system's reason, such as a name too
// long). Never throws anything else: std::filesystem's own checks throw
// filesystem_error for a path the system cannot even look up.
void require_file(const std::string& what, const std::string& path);
// Whether `path` is an existing folder (false for any path the system cannot look up).
bool is_folder(const std::string& path);

// The device a --device value names ("cpu" or "cuda"); std::invalid_argument when it
// is neither, or when this build or machine has no such device.
Device device_from_flag(const std::string& value);

// Creates the folder `dir` (with its parents) when needed and checks that a file can be
// created and written in it; std::invalid_argument naming `flag`, the folder and the
// system's reason otherwise. Output flags are checked so before any work is done.
void prepare_output_folder(const std::string& flag, const std::string& dir);
// For an output file flag ("-": standard output, or "": none, pass): its folder must
// exist and be writable, as above.
void check_output_file(const std::string& flag, const std::string& path);

// Writes `text` to standard output when `target` is "-", else atomically to the file
// `target`; io::FileWriteError naming `flag`, the file and the system's reason when the
// write fails.
void write_output(const std::string& flag, const std::string& target, const std::string& text);

// Parses the command line into `app`'s bound options, runs `body`, and turns every
// failure into a message "<name>: <what>" on stderr and the exit code above.
int run_app(const char* name, CLI::App& app, int argc, char** argv, const std::function<int()>& body);

}  // namespace polyak::app
