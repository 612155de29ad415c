// Runs an app binary as a child process, as the crash and failure tests need it: with
// extra environment variables (the fault-injection hooks), an optional limit on the
// size of the files it writes (RLIMIT_FSIZE, SIGXFSZ ignored, so that write() fails
// with EFBIG as on a full disk), its output captured, and killed with SIGKILL when it
// stops itself (the POLYAK_FAULT_STOP_AT_STEP hook of the train app).
#pragma once

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace polyak::testing {

struct ChildResult {
  int exit_code = -1;       // when it exited
  int signal = 0;           // the signal that ended it (SIGKILL: killed, by itself or by us)
  bool stopped = false;     // it stopped itself and was then killed by us
  std::string output;       // stdout and stderr
  bool killed() const { return signal == SIGKILL; }
};

inline ChildResult run_child(const std::string& binary, const std::vector<std::string>& args,
                             const std::vector<std::string>& env = {}, std::optional<rlim_t> file_size_limit = {}) {
  const std::filesystem::path log =
      std::filesystem::temp_directory_path() / ("polyak_child_" + std::to_string(::getpid()) + ".log");
  // Everything the child needs is built before fork(): after it only async-signal-safe calls.
  std::vector<std::string> argv_text = {binary};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_text(env);
  for (char** e = environ; *e; ++e) env_text.emplace_back(*e);  // later duplicates lose: ours come first
  std::vector<char*> envp;
  for (std::string& e : env_text) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string log_path = log.string();

  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) ::_exit(126);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::close(fd);
    if (file_size_limit) {
      ::signal(SIGXFSZ, SIG_IGN);  // ignored signals stay ignored across exec
      const struct rlimit limit = {*file_size_limit, *file_size_limit};
      if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(126);
    }
    ::execve(binary.c_str(), argv.data(), envp.data());
    ::_exit(127);
  }
  ChildResult result;
  int status = 0;
  ::waitpid(pid, &status, WUNTRACED);
  if (WIFSTOPPED(status)) {
    result.stopped = true;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  result.output = text.str();
  std::filesystem::remove(log);
  return result;
}

}  // namespace polyak::testing
