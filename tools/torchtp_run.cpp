// torchtp-run: starts one process per rank, like torchrun, for torchtp
// programs. Plain POSIX + CLI11 (+ nlohmann-json for the ranks' error
// files) so it builds without libtorch.

#include "torchtp/detail/blas_core.h"
#include "torchtp/detail/threads.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

/// Parsed and validated command line.
struct Options {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr;
  int master_port = 0;
  double grace_seconds = 5.0;
  bool no_tag = false;
  int omp_threads = 0;
  std::string interface;
  std::vector<std::string> command;
};

/// One output stream (stdout or stderr) of one rank.
struct Stream {
  int fd = -1;     ///< Read end of the pipe; -1 once closed.
  int out_fd = 1;  ///< Where the launcher re-emits the lines.
  std::string tag; ///< Line prefix, e.g. "[rank 3] ".
  std::string buf; ///< Bytes received after the last newline.
};

/// One launched rank.
struct Child {
  pid_t pid = -1;
  int rank = 0;
  bool reaped = false;
};

/// Write end of the self-pipe; the signal handler only writes to it.
int g_signal_pipe = -1;

constexpr int kExitUsage = 2;
constexpr int kExitExecFailed = 127;
/// Lines longer than this are cut so one rank cannot exhaust memory.
constexpr size_t kMaxLine = 1 << 16;
/// How long the other ranks may take to exit by themselves after a rank
/// that reported its failure (torchtp::report_failure) exits: they were
/// told, and say so, before SIGTERM would cut them short.
constexpr auto kSettle = std::chrono::seconds(2);

/// Usage line that shows the wrapped command, which CLI11 cannot infer.
class UsageFormatter : public CLI::Formatter {
 public:
  std::string make_usage(const CLI::App*, std::string name) const override {
    return "\nUsage: " + name + " [OPTIONS] PROGRAM [ARGS...]\n";
  }
};

/// Writes all of `data`; errors are ignored because there is nobody left
/// to tell (e.g. the launcher's own stdout was closed).
void write_all(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return;
    done += static_cast<size_t>(n);
  }
}

/// Prints a launcher message to stderr as one write, so it never lands
/// in the middle of a rank's line.
void log_line(const std::string& msg) {
  write_all(2, "torchtp-run: " + msg + "\n");
}

/// Async-signal-safe: forwards the signal number to the main loop.
void on_signal(int signo) {
  int saved = errno;
  unsigned char byte = static_cast<unsigned char>(signo);
  (void)!write(g_signal_pipe, &byte, 1);
  errno = saved;
}

/// Asks the kernel for an unused port on 127.0.0.1. The port is released
/// before rank 0 binds it, a small race that torchrun accepts too.
int pick_free_port() {
  int sock = socket(AF_INET, SOCK_STREAM, 0);
  if (sock < 0)
    return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(sock, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(sock);
  return port;
}

/// Parses argv into `opts`. Returns -1 to continue, else an exit code.
int parse_args(int argc, char** argv, Options& opts) {
  CLI::App app{
      "Runs PROGRAM once per rank on this host, as torchrun does, and wires\n"
      "the ranks together through environment variables. Each output line\n"
      "of a rank is prefixed with \"[rank R] \". Everything after PROGRAM\n"
      "is passed to it untouched, even arguments starting with '-'."};
  app.name("torchtp-run");
  app.prefix_command();
  app.formatter(std::make_shared<UsageFormatter>());
  app.get_formatter()->column_width(28);
  // Named like CLI11's own checks; the bare Range prints INT_MAX in help.
  CLI::Validator positive = CLI::Range(1, INT_MAX);
  positive.description("POSITIVE");
  CLI::Validator non_negative = CLI::Range(0, INT_MAX);
  non_negative.description("NONNEGATIVE");
  app.add_option(
         "--nproc-per-node", opts.nproc_per_node,
         "Ranks to start on this host (default 1)")
      ->check(positive);
  app.add_option("--nnodes", opts.nnodes, "Number of hosts (default 1)")
      ->check(positive);
  app.add_option(
         "--node-rank", opts.node_rank,
         "Index of this host, 0..nnodes-1 (default 0)")
      ->check(non_negative);
  app.add_option(
      "--master-addr", opts.master_addr,
      "Host of rank 0 (default 127.0.0.1 with one node)");
  app.add_option(
         "--master-port", opts.master_port,
         "Rendezvous port; one node: a free port if omitted")
      ->check(CLI::Range(1, 65535));
  app.add_option(
         "--grace-seconds", opts.grace_seconds,
         "Wait after SIGTERM before SIGKILL (default 5)")
      ->check(CLI::NonNegativeNumber);
  app.add_option(
      "--interface", opts.interface,
      "Network interface the ranks' Gloo connections use (sets\n"
      "GLOO_SOCKET_IFNAME); default: the one that reaches --master-addr");
  app.add_flag("--no-tag", opts.no_tag, "Do not prefix lines with the rank");
  app.add_option(
         "--omp-threads", opts.omp_threads,
         "OMP_NUM_THREADS for each rank (overrides all else)")
      ->check(positive);
  app.footer(
      "Environment of each rank:\n"
      "  RANK              node_rank * nproc_per_node + LOCAL_RANK\n"
      "  WORLD_SIZE        nnodes * nproc_per_node\n"
      "  LOCAL_RANK        0..nproc_per_node-1 on this host\n"
      "  LOCAL_WORLD_SIZE  nproc_per_node\n"
      "  GROUP_RANK        node_rank\n"
      "  MASTER_ADDR       --master-addr\n"
      "  MASTER_PORT       --master-port\n"
      "  OMP_NUM_THREADS   --omp-threads, else the launcher's own value,\n"
      "                    else max(1, usable CPUs / nproc_per_node)\n"
      "  GLOO_SOCKET_IFNAME --interface, when given\n"
      "  TORCHTP_RUN       1\n"
      "Ranks get /dev/null as stdin and run in their own process groups.\n"
      "\n"
      "Failure: when a rank exits non-zero or dies from a signal, the\n"
      "others get SIGTERM, then SIGKILL after --grace-seconds, and\n"
      "torchtp-run exits with that rank's code (128+N for signal N).\n"
      "A rank that reported its error (torchtp::report_failure, in the\n"
      "file TORCHTP_ERROR_FILE names) gives the others up to 2 s to exit\n"
      "first; at the end torchtp-run prints the job's root cause (the\n"
      "first failure any rank recorded) once.\n"
      "SIGINT/SIGTERM sent to torchtp-run are forwarded to all ranks.\n"
      "Bad usage exits 2; a PROGRAM that cannot be run exits 127.\n"
      "\n"
      "Examples:\n"
      "  # one host, 4 ranks\n"
      "  torchtp-run --nproc-per-node 4 ./train --epochs 3\n"
      "  # two hosts, 2 ranks each; run on both with --node-rank 0 / 1\n"
      "  torchtp-run --nproc-per-node 2 --nnodes 2 --node-rank 0 \\\n"
      "      --master-addr 10.0.0.1 --master-port 29500 ./train\n");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }
  opts.command = app.remaining();
  // prefix_command() keeps a "--" separator; it is not part of PROGRAM.
  if (!opts.command.empty() && opts.command.front() == "--") {
    opts.command.erase(opts.command.begin());
  }
  auto usage_error = [](const std::string& msg) {
    log_line(msg + "\nRun with --help for more information.");
    return kExitUsage;
  };
  if (opts.command.empty())
    return usage_error("missing PROGRAM to run");
  // CLI11 stops at the first unknown option; treating a typo such as
  // "--nproc 2" as the program would give a confusing exec error.
  if (opts.command.front().size() > 1 && opts.command.front()[0] == '-') {
    return usage_error("unknown option " + opts.command.front());
  }
  if (opts.node_rank >= opts.nnodes) {
    return usage_error("--node-rank must be below --nnodes");
  }
  if (opts.nnodes > 1 && (opts.master_addr.empty() || !opts.master_port)) {
    return usage_error(
        "--master-addr and --master-port are required when --nnodes > 1");
  }
  if (opts.nproc_per_node > INT_MAX / opts.nnodes) {
    return usage_error("--nnodes * --nproc-per-node is too large");
  }
  // Checked here, on this host: a typo would otherwise surface as every
  // rank failing to connect.
  if (!opts.interface.empty() && if_nametoindex(opts.interface.c_str()) == 0) {
    return usage_error(
        "--interface " + opts.interface +
        ": no such network interface on this host (ip link lists them)");
  }
  if (opts.master_addr.empty())
    opts.master_addr = "127.0.0.1";
  if (!opts.master_port) {
    opts.master_port = pick_free_port();
    if (opts.master_port < 0) {
      log_line(std::string("cannot find a free port: ") + strerror(errno));
      return 1;
    }
  }
  return -1;
}

/// In the forked child: joins a fresh process group, wires the pipes,
/// sets the rank's environment and execs. Never returns.
[[noreturn]] void exec_rank(
    const Options& opts,
    int local_rank,
    int out_fd,
    int err_fd,
    const std::string& omp,
    const std::string& error_file,
    const sigset_t& orig_mask) {
  // Own group, so one killpg() reaches the rank's descendants too.
  setpgid(0, 0);
#ifdef __linux__
  // If the launcher is SIGKILLed it cannot clean up; let the kernel do it.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
  for (int sig : {SIGINT, SIGTERM, SIGCHLD, SIGPIPE})
    signal(sig, SIG_DFL);
  sigprocmask(SIG_SETMASK, &orig_mask, nullptr);
  // A background process group reading the terminal would be stopped by
  // SIGTTIN and hang the job, so ranks never see the launcher's stdin.
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd >= 0)
    dup2(null_fd, 0);
  dup2(out_fd, 1);
  dup2(err_fd, 2);
  int rank = opts.node_rank * opts.nproc_per_node + local_rank;
  auto set = [](const char* key, long value) {
    setenv(key, std::to_string(value).c_str(), 1);
  };
  set("RANK", rank);
  set("WORLD_SIZE", static_cast<long>(opts.nnodes) * opts.nproc_per_node);
  set("LOCAL_RANK", local_rank);
  set("LOCAL_WORLD_SIZE", opts.nproc_per_node);
  set("GROUP_RANK", opts.node_rank);
  set("MASTER_PORT", opts.master_port);
  set("TORCHTP_RUN", 1);
  setenv("MASTER_ADDR", opts.master_addr.c_str(), 1);
  setenv("OMP_NUM_THREADS", omp.c_str(), 1);
  if (!error_file.empty())
    setenv("TORCHTP_ERROR_FILE", error_file.c_str(), 1);
  if (!opts.interface.empty())
    setenv("GLOO_SOCKET_IFNAME", opts.interface.c_str(), 1);
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

/// Re-emits every complete line in `s.buf`; with `at_eof` also the final
/// unterminated line. One write per line keeps ranks from interleaving.
void emit_lines(Stream& s, bool at_eof) {
  size_t start = 0;
  for (;;) {
    size_t nl = s.buf.find('\n', start);
    if (nl == std::string::npos)
      break;
    write_all(s.out_fd, s.tag + s.buf.substr(start, nl - start + 1));
    start = nl + 1;
  }
  s.buf.erase(0, start);
  if (!s.buf.empty() && (at_eof || s.buf.size() > kMaxLine)) {
    write_all(s.out_fd, s.tag + s.buf + "\n");
    s.buf.clear();
  }
}

/// Reads what is available on `s`; closes it at EOF or on error.
void pump(Stream& s) {
  char chunk[65536];
  ssize_t n = read(s.fd, chunk, sizeof(chunk));
  if (n < 0 && (errno == EINTR || errno == EAGAIN))
    return;
  if (n > 0) {
    s.buf.append(chunk, static_cast<size_t>(n));
    emit_lines(s, false);
    return;
  }
  emit_lines(s, true);
  close(s.fd);
  s.fd = -1;
}

/// Polls the signal pipe and open streams; returns poll()'s result.
int poll_streams(std::vector<Stream>& streams, int sig_fd, int timeout_ms) {
  std::vector<pollfd> fds;
  if (sig_fd >= 0)
    fds.push_back({sig_fd, POLLIN, 0});
  for (const auto& s : streams) {
    if (s.fd >= 0)
      fds.push_back({s.fd, POLLIN, 0});
  }
  int ready = poll(fds.data(), fds.size(), timeout_ms);
  if (ready <= 0)
    return ready;
  // Map results back by fd; closed streams were skipped above.
  size_t i = sig_fd >= 0 ? 1 : 0;
  for (auto& s : streams) {
    if (s.fd < 0)
      continue;
    if (fds[i++].revents)
      pump(s);
  }
  return ready;
}

/// Signals every rank's process group. Groups outlive their leader, so
/// reaped ranks are included to catch leftover descendants.
void signal_all(const std::vector<Child>& children, int sig) {
  for (const auto& c : children)
    killpg(c.pid, sig);
}

/// Gives the ranks the OpenBLAS kernels this CPU runs best when OpenBLAS
/// would fall back to its generic ones; a user's OPENBLAS_CORETYPE stands.
void select_blas_core() {
  const char* set = getenv("OPENBLAS_CORETYPE");
  if (set != nullptr && *set != '\0') {
    return;
  }
  const std::string core = torchtp::detail::openblas_core();
  const std::string better =
      torchtp::detail::better_blas_core(core, torchtp::detail::cpu_flags());
  if (!better.empty()) {
    setenv("OPENBLAS_CORETYPE", better.c_str(), 1);
    log_line(
        "OpenBLAS does not recognise this CPU and would use its generic " +
        core + " kernels; ranks run with OPENBLAS_CORETYPE=" + better +
        " (set OPENBLAS_CORETYPE yourself to choose)");
  }
}

/// OMP_NUM_THREADS for every rank: --omp-threads, else the launcher's own
/// value, else the ranks' share of this host's cores.
std::string omp_num_threads(const Options& opts) {
  if (opts.omp_threads > 0)
    return std::to_string(opts.omp_threads);
  const char* env_omp = getenv("OMP_NUM_THREADS");
  if (env_omp && *env_omp)
    return env_omp;
  return std::to_string(
      torchtp::detail::threads_per_local_rank(opts.nproc_per_node));
}

/// What a rank wrote to its TORCHTP_ERROR_FILE, when it did.
struct ErrorReport {
  bool present = false;
  std::string root_cause;
  long long timestamp_us = 0;
};

ErrorReport read_error_file(const std::string& path) {
  ErrorReport r;
  std::ifstream in(path);
  if (path.empty() || !in)
    return r;
  try {
    auto j = nlohmann::json::parse(in);
    r.root_cause = j.value("root_cause", j.value("message", ""));
    r.timestamp_us = j.value("timestamp_us", 0LL);
    r.present = !r.root_cause.empty();
  } catch (const std::exception&) {
    // A half-written or foreign file: no report.
  }
  return r;
}

/// How a reaped rank ended, for the failure message.
std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) {
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  }
  return "exited with code " + std::to_string(WEXITSTATUS(status));
}

/// The ranks of this host, their output and the failure policy: run() is
/// the steps in order, each a method below.
class Job {
 public:
  explicit Job(const Options& opts) : opts_(opts) {}

  /// Starts all ranks, relays their output and enforces the failure
  /// policy. Returns the launcher's exit code.
  int run() {
    omp_ = omp_num_threads(opts_);
    select_blas_core();
    if (!install_signal_handlers())
      return 1;
    make_error_dir();
    spawn_ranks();
    // Signals that came while forking are delivered now, to the loop.
    sigprocmask(SIG_SETMASK, &orig_mask_, nullptr);
    wait_for_ranks();
    // Descendants that ignored SIGTERM would keep the pipes open forever.
    if (stopping_)
      signal_all(children_, SIGKILL);
    drain_output();
    report_root_cause();
    remove_error_dir();
    return exit_code_;
  }

 private:
  /// Routes SIGINT, SIGTERM and SIGCHLD through the self-pipe to the wait
  /// loop, and leaves them blocked until run() has all ranks.
  bool install_signal_handlers() {
    int sig_pipe[2];
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
      log_line(std::string("pipe: ") + strerror(errno));
      return false;
    }
    g_signal_pipe = sig_pipe[1];
    signal_fd_ = sig_pipe[0];
    // Blocked while forking so a child never runs our handler.
    sigset_t handled;
    sigemptyset(&handled);
    for (int sig : {SIGINT, SIGTERM, SIGCHLD})
      sigaddset(&handled, sig);
    sigprocmask(SIG_BLOCK, &handled, &orig_mask_);
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    for (int sig : {SIGINT, SIGTERM, SIGCHLD})
      sigaction(sig, &sa, nullptr);
    // A closed stdout must not kill the launcher before it reaps the ranks.
    signal(SIGPIPE, SIG_IGN);
    return true;
  }

  /// A directory for the ranks' error files, removed at the end; without
  /// one the ranks simply write none.
  void make_error_dir() {
    const char* tmp = getenv("TMPDIR");
    std::string templ =
        std::string(tmp && *tmp ? tmp : "/tmp") + "/torchtp-run.XXXXXX";
    if (mkdtemp(templ.data()) != nullptr)
      error_dir_ = templ;
  }

  std::string error_file(int rank) const {
    return error_dir_.empty()
               ? ""
               : error_dir_ + "/rank" + std::to_string(rank) + ".json";
  }

  void remove_error_dir() {
    if (error_dir_.empty())
      return;
    for (const auto& c : children_) {
      unlink(error_file(c.rank).c_str());
      unlink((error_file(c.rank) + ".tmp").c_str());
    }
    rmdir(error_dir_.c_str());
  }

  /// Once, at the end of a failed job: the first failure any rank recorded
  /// (every rank's file carries the job's, read from the store, so the
  /// earliest is the root cause), else how the first failed rank ended.
  void report_root_cause() {
    if (first_failure_.empty())
      return;
    ErrorReport first;
    for (const auto& c : children_) {
      ErrorReport r = read_error_file(error_file(c.rank));
      if (r.present && (!first.present || r.timestamp_us < first.timestamp_us))
        first = r;
    }
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
    int rank = opts_.node_rank * opts_.nproc_per_node + local;
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
      log_line(std::string("pipe: ") + strerror(errno));
      signal_all(children_, SIGKILL);
      _exit(1); // The kernel reaps; the children die with their group.
    }
    pid_t pid = fork();
    if (pid == 0)
      exec_rank(
          opts_, local, out[1], err[1], omp_, error_file(rank), orig_mask_);
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
      poll_streams(streams_, signal_fd_, poll_timeout_ms());
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
    unsigned char sig;
    while (read(signal_fd_, &sig, 1) == 1) {
      if (sig == SIGCHLD)
        continue;      // reap() covers it.
      if (stopping_) { // A second Ctrl-C means "now".
        kill_all();
        continue;
      }
      log_line(
          std::string("received ") + strsignal(sig) + "; stopping all ranks");
      signal_all(children_, sig);
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
      if (code == 0 || stopping_ || settling_)
        continue; // Only the first cause counts.
      first_failure_ = "rank " + std::to_string(it->rank) + " (pid " +
                       std::to_string(pid) + ") " + describe_exit(status);
      exit_code_ = code;
      if (read_error_file(error_file(it->rank)).present) {
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

  /// Ranks are gone; relays what they wrote, but a stray grandchild
  /// holding a pipe open must not keep the launcher alive, so the wait is
  /// bounded.
  void drain_output() {
    auto drain_end = Clock::now() + std::chrono::seconds(1);
    while (Clock::now() < drain_end && poll_streams(streams_, -1, 50) > 0) {
    }
    for (auto& s : streams_) {
      if (s.fd < 0)
        continue;
      emit_lines(s, true);
      close(s.fd);
    }
  }

  const Options& opts_;
  std::string omp_;      ///< OMP_NUM_THREADS of every rank.
  int signal_fd_ = -1;   ///< Read end of the self-pipe.
  sigset_t orig_mask_{}; ///< The mask to restore once the ranks exist.
  std::vector<Child> children_;
  std::vector<Stream> streams_;
  size_t alive_ = 0;
  int exit_code_ = 0;
  bool settling_ = false;      ///< A rank that reported failed: see kSettle.
  bool stopping_ = false;      ///< A failure or signal is being acted on.
  bool killed_ = false;        ///< Every rank was sent SIGKILL.
  Clock::time_point deadline_; ///< When stopping turns into SIGKILL.
  Clock::time_point settle_deadline_; ///< When settling turns into SIGTERM.
  std::string error_dir_;     ///< Where the ranks' error files go.
  std::string first_failure_; ///< How the first failed rank ended.
};

} // namespace

int main(int argc, char** argv) {
  Options opts;
  int code = parse_args(argc, argv, opts);
  if (code >= 0)
    return code;
  return Job(opts).run();
}
