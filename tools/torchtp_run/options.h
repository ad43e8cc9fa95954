#pragma once

// torchtp-run's command line: the options, their --help text and the
// checks that refuse a bad invocation before any rank starts.

#include <optional>
#include <string>
#include <vector>

namespace torchtp::launcher {

/// Exit code of a bad invocation, as torchrun's.
constexpr int kExitUsage = 2;

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

  /// The job-wide RANK of this host's `local_rank`.
  int rank(int local_rank) const {
    return node_rank * nproc_per_node + local_rank;
  }
  /// WORLD_SIZE; parse_args() has checked that it fits in an int.
  int world_size() const {
    return nnodes * nproc_per_node;
  }
};

/// Parses argv into `opts` and fills in the defaults (master address and,
/// on one node, a free port). Returns the launcher's exit code when it
/// should stop here (after --help, or on a bad invocation), else nullopt.
std::optional<int> parse_args(int argc, char** argv, Options& opts);

} // namespace torchtp::launcher
