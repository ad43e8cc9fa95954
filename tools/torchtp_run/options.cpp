#include "options.h"

#include "log.h"

#include <CLI/CLI.hpp>

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>

namespace torchtp::launcher {
namespace {

/// Usage line that shows the wrapped command, which CLI11 cannot infer.
class UsageFormatter : public CLI::Formatter {
 public:
  std::string make_usage(const CLI::App*, std::string name) const override {
    return "\nUsage: " + name + " [OPTIONS] PROGRAM [ARGS...]\n";
  }
};

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

/// The options, their help and the footer that documents the ranks'
/// environment and the failure policy.
void describe_options(CLI::App& app, Options& opts) {
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
      "SIGINT/SIGTERM sent to torchtp-run are forwarded to all ranks; the\n"
      "exit code is then 0 if every rank exits 0 within --grace-seconds\n"
      "(a server that drains its requests), else 128 + the signal.\n"
      "Bad usage exits 2; a PROGRAM that cannot be run exits 127.\n"
      "\n"
      "Examples:\n"
      "  # one host, 4 ranks\n"
      "  torchtp-run --nproc-per-node 4 ./train --epochs 3\n"
      "  # two hosts, 2 ranks each; run on both with --node-rank 0 / 1\n"
      "  torchtp-run --nproc-per-node 2 --nnodes 2 --node-rank 0 \\\n"
      "      --master-addr 10.0.0.1 --master-port 29500 ./train\n");
}

/// What CLI11 cannot check: PROGRAM itself and the options together.
/// Returns the message of the first problem, or "" when there is none.
std::string invocation_problem(const Options& opts) {
  if (opts.command.empty())
    return "missing PROGRAM to run";
  // CLI11 stops at the first unknown option; treating a typo such as
  // "--nproc 2" as the program would give a confusing exec error.
  if (opts.command.front().size() > 1 && opts.command.front()[0] == '-')
    return "unknown option " + opts.command.front();
  if (opts.node_rank >= opts.nnodes)
    return "--node-rank must be below --nnodes";
  if (opts.nnodes > 1 && (opts.master_addr.empty() || !opts.master_port))
    return "--master-addr and --master-port are required when --nnodes > 1";
  if (opts.nproc_per_node > INT_MAX / opts.nnodes)
    return "--nnodes * --nproc-per-node is too large";
  // Checked here, on this host: a typo would otherwise surface as every
  // rank failing to connect.
  if (!opts.interface.empty() && if_nametoindex(opts.interface.c_str()) == 0)
    return "--interface " + opts.interface +
           ": no such network interface on this host (ip link lists them)";
  return "";
}

} // namespace

std::optional<int> parse_args(int argc, char** argv, Options& opts) {
  CLI::App app{
      "Runs PROGRAM once per rank on this host, as torchrun does, and wires\n"
      "the ranks together through environment variables. Each output line\n"
      "of a rank is prefixed with \"[rank R] \". Everything after PROGRAM\n"
      "is passed to it untouched, even arguments starting with '-'."};
  describe_options(app, opts);
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
  if (std::string problem = invocation_problem(opts); !problem.empty()) {
    log_line(problem + "\nRun with --help for more information.");
    return kExitUsage;
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
  return std::nullopt;
}

} // namespace torchtp::launcher
