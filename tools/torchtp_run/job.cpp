#include "job.h"

#include "environment.h"
#include "error_report.h"
#include "log.h"
#include "signals.h"
#include "tagged_output.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace torchtp::launcher {
namespace {

using Clock = std::chrono::steady_clock;

/// Exit code of a PROGRAM that cannot be run, as a shell's.
constexpr int kExitExecFailed = 127;
/// How long the other ranks may take to exit by themselves after a rank
/// that reported its failure (torchtp::report_failure) exits: they were
/// told, and say so, before SIGTERM would cut them short.
constexpr auto kSettle = std::chrono::seconds(2);

/// One launched rank.
struct Child {
  pid_t pid = -1;
  int rank = 0;
  bool reaped = false;
};

/// In the forked child: joins a fresh process group, wires the pipes,
/// sets the rank's environment and execs. Never returns.
[[noreturn]] void exec_rank(
    const Options& opts,
    int local_rank,
    int out_fd,
    int err_fd,
    const std::string& omp_threads,
    const std::string& error_file,
    const SignalPipe& signals) {
  // Own group, so one killpg() reaches the rank's descendants too.
  setpgid(0, 0);
#ifdef __linux__
  // If the launcher is SIGKILLed it cannot clean up; let the kernel do it.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
  signals.restore_in_child();
  // A background process group reading the terminal would be stopped by
  // SIGTTIN and hang the job, so ranks never see the launcher's stdin.
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd >= 0)
    dup2(null_fd, 0);
  dup2(out_fd, 1);
  dup2(err_fd, 2);
  set_rank_environment(opts, local_rank, omp_threads, error_file);
  std::vector<char*> argv;
  for (const auto& arg : opts.command) {
    argv.push_back(const_cast<char*>(arg.c_str()));
  }
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  std::string msg = "torchtp-run: cannot execute '" + opts.command[0] +
                    "': " + strerror(errno) + "\n";
  write_all(2, msg);
  _exit(kExitExecFailed);
}

/// Signals every rank's process group. Groups outlive their leader, so
/// reaped ranks are included to catch leftover descendants.
void signal_all(const std::vector<Child>& children, int sig) {
  for (const auto& c : children)
    killpg(c.pid, sig);
}

/// The ranks of this host, their output and the failure policy: run() is
/// the steps in order, each a method below.
class Job {
 public:
  explicit Job(const Options& opts)
      : opts_(opts), error_files_(opts.rank(0), opts.nproc_per_node) {}

  int run() {
    omp_threads_ = omp_num_threads(opts_);
    select_blas_core();
    if (!signals_.install())
      return 1;
    error_files_.create();
    spawn_ranks();
    // Signals that came while forking are delivered now, to the loop.
    signals_.unblock();
    wait_for_ranks();
    // Descendants that ignored SIGTERM would keep the pipes open forever.
    if (stopping_)
      signal_all(children_, SIGKILL);
    drain_streams(streams_);
    report_root_cause();
    error_files_.remove();
    // Asked to stop, and every rank finished cleanly in time (a server
    // draining its requests): the job did what it was told.
    if (forwarded_signal_ && every_exit_zero_ && !killed_)
      return 0;
    return exit_code_;
  }

 private:
  /// Once, at the end of a failed job: the first failure any rank
  /// recorded, else how the first failed rank ended.
  void report_root_cause() {
    if (first_failure_.empty())
      return;
    ErrorReport first = error_files_.earliest();
    log_line(
        "root cause (first failure in the job): " +
        (first.present ? first.root_cause : first_failure_));
  }

  void spawn_ranks() {
    for (int local = 0; local < opts_.nproc_per_node; ++local)
      spawn_rank(local);
  }

  /// Forks and execs one rank with its stdout and stderr on two pipes.
  /// A launcher that cannot start every rank kills those it started and
  /// exits 1 at once.
  void spawn_rank(int local) {
    int rank = opts_.rank(local);
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
      log_line(std::string("pipe: ") + strerror(errno));
      signal_all(children_, SIGKILL);
      _exit(1); // The kernel reaps; the children die with their group.
    }
    pid_t pid = fork();
    if (pid == 0)
      exec_rank(
          opts_, local, out[1], err[1], omp_threads_, error_files_.path(rank),
          signals_);
    // Also set here: a kill before the child runs setpgid must not miss.
    if (pid > 0)
      setpgid(pid, pid);
    close(out[1]);
    close(err[1]);
    if (pid < 0) {
      log_line(std::string("fork: ") + strerror(errno));
      signal_all(children_, SIGKILL);
      _exit(1);
    }
    std::string tag =
        opts_.no_tag ? "" : "[rank " + std::to_string(rank) + "] ";
    children_.push_back({pid, rank, false});
    for (auto [fd, out_fd] : {std::pair{out[0], 1}, std::pair{err[0], 2}}) {
      fcntl(fd, F_SETFL, O_NONBLOCK);
      streams_.push_back({fd, out_fd, tag, ""});
    }
  }

  /// Relays output and acts on signals and exits until every rank is
  /// reaped.
  void wait_for_ranks() {
    alive_ = children_.size();
    while (alive_ > 0) {
      poll_streams(streams_, signals_.fd(), poll_timeout_ms());
      forward_signals();
      reap();
      stop_after_settling();
      kill_after_grace();
    }
  }

  /// While stopping, poll() must wake by the deadline so the SIGKILL is
  /// not late; otherwise output, a signal or an exit wakes it.
  int poll_timeout_ms() const {
    if (!(stopping_ || settling_) || killed_)
      return -1;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        (stopping_ ? deadline_ : settle_deadline_) - Clock::now());
    return static_cast<int>(std::max<long long>(0, left.count()) + 1);
  }

  /// Passes SIGINT/SIGTERM sent to the launcher on to every rank.
  void forward_signals() {
    while (int sig = signals_.next()) {
      if (sig == SIGCHLD)
        continue;      // reap() covers it.
      if (stopping_) { // A second Ctrl-C means "now".
        kill_all();
        continue;
      }
      log_line(
          std::string("received ") + strsignal(sig) + "; stopping all ranks");
      signal_all(children_, sig);
      forwarded_signal_ = true;
      exit_code_ = 128 + sig;
      start_grace_period();
    }
  }

  /// Collects the ranks that exited; the first that failed sets the exit
  /// code and stops the others.
  void reap() {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      auto it = std::find_if(
          children_.begin(), children_.end(),
          [pid](const Child& c) { return c.pid == pid; });
      if (it == children_.end())
        continue;
      it->reaped = true;
      --alive_;
      bool signaled = WIFSIGNALED(status);
      int code = signaled ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
      every_exit_zero_ = every_exit_zero_ && code == 0;
      if (code == 0 || stopping_ || settling_)
        continue; // Only the first cause counts.
      first_failure_ = "rank " + std::to_string(it->rank) + " (pid " +
                       std::to_string(pid) + ") " + describe_exit(status);
      exit_code_ = code;
      if (error_files_.read(it->rank).present) {
        // The rank told the others; they end by themselves, soon.
        log_line(first_failure_ + "; the other ranks were told, stopping them");
        settling_ = true;
        settle_deadline_ = Clock::now() + kSettle;
        continue;
      }
      log_line(first_failure_ + "; stopping the other ranks");
      stop_others();
    }
  }

  /// Stops the ranks that did not exit by themselves while settling.
  void stop_after_settling() {
    if (settling_ && !stopping_ && Clock::now() >= settle_deadline_ &&
        alive_ > 0)
      stop_others();
  }

  /// SIGTERM to the ranks still running, SIGKILL after the grace period.
  void stop_others() {
    for (const auto& c : children_) {
      if (!c.reaped)
        killpg(c.pid, SIGTERM);
    }
    start_grace_period();
  }

  void start_grace_period() {
    stopping_ = true;
    deadline_ =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(opts_.grace_seconds));
  }

  void kill_after_grace() {
    if (stopping_ && !killed_ && Clock::now() >= deadline_ && alive_ > 0)
      kill_all();
  }

  void kill_all() {
    signal_all(children_, SIGKILL);
    killed_ = true;
  }

  const Options& opts_;
  ErrorFiles error_files_;
  SignalPipe signals_;
  std::string omp_threads_; ///< OMP_NUM_THREADS of every rank.
  std::vector<Child> children_;
  std::vector<TaggedStream> streams_;
  size_t alive_ = 0;
  int exit_code_ = 0;
  bool settling_ = false;      ///< A rank that reported failed: see kSettle.
  bool forwarded_signal_ = false; ///< SIGINT/SIGTERM passed on to the ranks.
  bool every_exit_zero_ = true;   ///< No rank has exited non-zero.
  bool stopping_ = false;      ///< A failure or signal is being acted on.
  bool killed_ = false;        ///< Every rank was sent SIGKILL.
  Clock::time_point deadline_; ///< When stopping turns into SIGKILL.
  Clock::time_point settle_deadline_; ///< When settling turns into SIGTERM.
  std::string first_failure_;         ///< How the first failed rank ended.
};

} // namespace

int run_job(const Options& opts) {
  return Job(opts).run();
}

} // namespace torchtp::launcher
