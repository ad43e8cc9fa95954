#pragma once

// The launcher's own writes to its stdout and stderr. Each message is one
// write(), so it never lands in the middle of a rank's line.

#include <string>

namespace torchtp::launcher {

/// Writes all of `data`; errors are ignored because there is nobody left
/// to tell (e.g. the launcher's own stdout was closed).
void write_all(int fd, const std::string& data);

/// Prints "torchtp-run: `msg`" to stderr as one write.
void log_line(const std::string& msg);

} // namespace torchtp::launcher
