#pragma once

// The launcher's signals: SIGINT, SIGTERM and SIGCHLD become bytes on a
// pipe (the self-pipe trick), so the job's poll() loop wakes for them and
// acts on them outside a signal handler.

#include <signal.h>

namespace torchtp::launcher {

class SignalPipe {
 public:
  /// Installs the handlers and ignores SIGPIPE. The three signals stay
  /// blocked until unblock(), so a rank forked meanwhile never runs the
  /// handler. Returns false (after saying why) when there is no pipe.
  bool install();

  /// Delivers the signals that came while blocked, to the pipe.
  void unblock() const;

  /// Opposite of install(), in a forked rank before exec: default
  /// handlers and the mask the launcher started with.
  void restore_in_child() const;

  /// The read end, for poll().
  int fd() const {
    return read_fd_;
  }

  /// The next signal received, or 0 when none is pending.
  int next() const;

 private:
  int read_fd_ = -1;
  sigset_t orig_mask_{}; ///< The mask to restore once the ranks exist.
};

} // namespace torchtp::launcher
