// A built binary (adore-server, adore-worker) run by a test as a child process on loopback, its output in
// files: started with one OpenMP / BLAS thread, stopped when the test is done or dies.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

extern char** environ;

namespace adore::testing {

// A built binary running as a child process, its stdout and stderr going to files. Stopped (SIGTERM,
// then SIGKILL) when destroyed, and killed by the kernel should this process die first.
class Child {
 public:
  static absl::StatusOr<std::unique_ptr<Child>> Start(const std::string& name, std::vector<std::string> args,
                                                      const std::string& dir) {
    std::unique_ptr<Child> c(new Child());
    c->name_ = name;
    c->out_path_ = dir + "/" + name + ".stdout";
    c->err_path_ = dir + "/" + name + ".stderr";
    // Everything the child needs is built before fork(): in between fork and exec only async-signal-safe
    // calls are allowed (this process has threads).
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // One OpenMP / BLAS thread per process: the ranks share the machine's cores.
    std::vector<std::string> env_strings = {"OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1"};
    for (char** e = environ; *e != nullptr; ++e) {
      if (!absl::StartsWith(*e, "OMP_NUM_THREADS=") && !absl::StartsWith(*e, "OPENBLAS_NUM_THREADS=")) {
        env_strings.push_back(*e);
      }
    }
    std::vector<char*> envp;
    for (std::string& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    const int out_fd = ::open(c->out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int err_fd = ::open(c->err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0 || err_fd < 0) {
      if (out_fd >= 0) ::close(out_fd);
      if (err_fd >= 0) ::close(err_fd);
      return absl::InternalError("cannot create the log files in " + dir);
    }
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);  // the test died before prctl took effect
      ::dup2(out_fd, STDOUT_FILENO);
      ::dup2(err_fd, STDERR_FILENO);
      ::execve(argv[0], argv.data(), envp.data());
      ::_exit(127);
    }
    ::close(out_fd);
    ::close(err_fd);
    if (pid < 0) return absl::InternalError(absl::StrCat("fork failed for ", name));
    c->pid_ = pid;
    return c;
  }

  ~Child() { Stop(); }

  // Waits until the child's stdout holds `prefix` and returns the word after it (an address printed by
  // the binary once it serves). An error carrying the child's logs when it exits first or the time is up.
  absl::StatusOr<std::string> WaitForWordAfter(const std::string& prefix, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      const std::string out = ReadFile(out_path_);
      if (const size_t at = out.find(prefix); at != std::string::npos) {
        const size_t begin = at + prefix.size(), end = out.find_first_of(" \n", begin);
        if (end != std::string::npos) return out.substr(begin, end - begin);
      }
      if (!Running()) {
        return absl::UnavailableError(absl::StrCat(name_, " exited (wait status ", wait_status_,
                                                   ") before printing '", prefix, "'\n", Logs()));
      }
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat(name_, " did not print '", prefix, "' within ",
                                                        absl::FormatDuration(timeout), "\n", Logs()));
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }

  pid_t pid() const { return pid_; }  // -1 once it has exited

  bool Running() {
    if (pid_ <= 0) return false;
    if (::waitpid(pid_, &wait_status_, WNOHANG) == pid_) pid_ = -1;
    return pid_ > 0;
  }

  // SIGTERM (the binaries shut down cleanly on it), then SIGKILL after `grace`.
  void Stop(absl::Duration grace = absl::Seconds(10)) {
    if (!Running()) return;
    ::kill(pid_, SIGTERM);
    const absl::Time deadline = absl::Now() + grace;
    while (Running() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
    if (Running()) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &wait_status_, 0);
      pid_ = -1;
    }
  }

  // The end of its stderr and stdout, for failure messages.
  std::string Logs() const {
    auto tail = [](const std::string& s) { return s.size() > 6000 ? "..." + s.substr(s.size() - 6000) : s; };
    return absl::StrCat("---- ", name_, " stderr ----\n", tail(ReadFile(err_path_)), "---- ", name_,
                        " stdout ----\n", tail(ReadFile(out_path_)));
  }

 private:
  Child() = default;
  static std::string ReadFile(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  std::string name_, out_path_, err_path_;
  pid_t pid_ = -1;
  int wait_status_ = 0;
};

}  // namespace adore::testing
