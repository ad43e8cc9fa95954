#include "tagged_output.h"

#include "log.h"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>

namespace torchtp::launcher {
namespace {

/// Lines longer than this are cut so one rank cannot exhaust memory.
constexpr size_t kMaxLine = 1 << 16;

/// Re-emits every complete line in `s.buf`; with `at_eof` also the final
/// unterminated line. One write per line keeps ranks from interleaving.
void emit_lines(TaggedStream& s, bool at_eof) {
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

/// Emits the unterminated rest and closes the pipe.
void finish(TaggedStream& s) {
  emit_lines(s, true);
  close(s.fd);
  s.fd = -1;
}

/// Reads what is available on `s`; closes it at EOF or on error.
void pump(TaggedStream& s) {
  char chunk[65536];
  ssize_t n = read(s.fd, chunk, sizeof(chunk));
  if (n < 0 && (errno == EINTR || errno == EAGAIN))
    return;
  if (n > 0) {
    s.buf.append(chunk, static_cast<size_t>(n));
    emit_lines(s, false);
    return;
  }
  finish(s);
}

} // namespace

int poll_streams(
    std::vector<TaggedStream>& streams, int wake_fd, int timeout_ms) {
  std::vector<pollfd> fds;
  if (wake_fd >= 0)
    fds.push_back({wake_fd, POLLIN, 0});
  for (const auto& s : streams) {
    if (s.fd >= 0)
      fds.push_back({s.fd, POLLIN, 0});
  }
  int ready = poll(fds.data(), fds.size(), timeout_ms);
  if (ready <= 0)
    return ready;
  // Map results back by fd; closed streams were skipped above.
  size_t i = wake_fd >= 0 ? 1 : 0;
  for (auto& s : streams) {
    if (s.fd < 0)
      continue;
    if (fds[i++].revents)
      pump(s);
  }
  return ready;
}

void drain_streams(std::vector<TaggedStream>& streams) {
  using Clock = std::chrono::steady_clock;
  auto drain_end = Clock::now() + std::chrono::seconds(1);
  while (Clock::now() < drain_end && poll_streams(streams, -1, 50) > 0) {
  }
  for (auto& s : streams) {
    if (s.fd >= 0)
      finish(s);
  }
}

} // namespace torchtp::launcher
