// Running a program as a child process and reading what it prints: the bench measures
// every configuration (ours and PyTorch's) in a process of its own, one after the
// other, so that each peak RSS is that configuration's alone and no two runs compete
// for the cores.
#pragma once

#include <string>
#include <vector>

namespace polyak::bench {

struct ChildResult {
  int exit_code = 0;  // the child's exit status, or 128 + the signal that ended it
  std::string output;  // its standard output
};

struct ChildOptions {
  // "NAME=value" entries set in the child's environment on top of this process's.
  std::vector<std::string> environment;
  bool quiet = false;  // discard the child's standard error (else it is shared with ours)
};

// Runs `argv` (argv[0] looked up in PATH when it has no slash) and waits for it.
// Throws std::runtime_error when the program cannot be started.
ChildResult run_child(const std::vector<std::string>& argv, const ChildOptions& options = {});

}  // namespace polyak::bench
