#include "signals.h"

#include "log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace torchtp::launcher {
namespace {

/// Write end of the self-pipe; the signal handler only writes to it.
int g_signal_pipe = -1;

/// Async-signal-safe: forwards the signal number to the main loop.
void on_signal(int signo) {
  int saved = errno;
  unsigned char byte = static_cast<unsigned char>(signo);
  (void)!write(g_signal_pipe, &byte, 1);
  errno = saved;
}

} // namespace

bool SignalPipe::install() {
  int sig_pipe[2];
  if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    log_line(std::string("pipe: ") + strerror(errno));
    return false;
  }
  g_signal_pipe = sig_pipe[1];
  read_fd_ = sig_pipe[0];
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

void SignalPipe::unblock() const {
  sigprocmask(SIG_SETMASK, &orig_mask_, nullptr);
}

void SignalPipe::restore_in_child() const {
  for (int sig : {SIGINT, SIGTERM, SIGCHLD, SIGPIPE})
    signal(sig, SIG_DFL);
  unblock();
}

int SignalPipe::next() const {
  unsigned char sig;
  return read(read_fd_, &sig, 1) == 1 ? sig : 0;
}

} // namespace torchtp::launcher
