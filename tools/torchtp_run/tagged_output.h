#pragma once

// Relays the ranks' stdout and stderr to the launcher's own, a whole line
// at a time with the rank's tag in front, so that lines of different ranks
// never interleave.

#include <string>
#include <vector>

namespace torchtp::launcher {

/// One output stream (stdout or stderr) of one rank.
struct TaggedStream {
  int fd = -1;     ///< Read end of the pipe; -1 once closed.
  int out_fd = 1;  ///< Where the launcher re-emits the lines.
  std::string tag; ///< Line prefix, e.g. "[rank 3] ".
  std::string buf; ///< Bytes received after the last newline.
};

/// Waits up to `timeout_ms` (-1: no limit) for output on the open streams
/// or for `wake_fd` (skipped when -1) to become readable, and relays what
/// arrived. Returns poll()'s result.
int poll_streams(
    std::vector<TaggedStream>& streams, int wake_fd, int timeout_ms);

/// Once the ranks are gone: relays what is left, for at most a second, as
/// a stray grandchild holding a pipe open must not keep the launcher
/// alive; then closes every stream.
void drain_streams(std::vector<TaggedStream>& streams);

} // namespace torchtp::launcher
