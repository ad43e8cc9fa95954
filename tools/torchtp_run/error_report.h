#pragma once

// How the launcher learns why a job failed: the error file each rank may
// write (TORCHTP_ERROR_FILE, see torchtp::report_failure) and, for a rank
// that wrote none, how its process ended.

#include <string>

namespace torchtp::launcher {

/// What a rank wrote to its TORCHTP_ERROR_FILE, when it did.
struct ErrorReport {
  bool present = false;
  std::string root_cause;
  long long timestamp_us = 0;
};

/// The error files of this host's ranks, in a private directory that
/// lives as long as the job.
class ErrorFiles {
 public:
  /// For the `count` ranks from `first_rank` on.
  ErrorFiles(int first_rank, int count)
      : first_rank_(first_rank), count_(count) {}

  /// Makes the directory in $TMPDIR (default /tmp); without one the ranks
  /// simply write none.
  void create();

  /// The file `rank` writes, or "" when there is no directory.
  std::string path(int rank) const;

  /// What `rank` reported; not present when it wrote nothing usable.
  ErrorReport read(int rank) const;

  /// The first failure any rank recorded. Every rank's file carries the
  /// job's, read from the store, so the earliest is the root cause.
  ErrorReport earliest() const;

  /// Removes the files (and their ".tmp" halves) and the directory.
  void remove() const;

 private:
  int first_rank_;
  int count_;
  std::string dir_;
};

/// How a reaped rank ended, from its wait status, for the failure
/// message: "exited with code 3", "was killed by signal 9 (Killed)".
std::string describe_exit(int status);

} // namespace torchtp::launcher
