#include "log.h"

#include <unistd.h>

#include <cerrno>

namespace torchtp::launcher {

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

void log_line(const std::string& msg) {
  write_all(2, "torchtp-run: " + msg + "\n");
}

} // namespace torchtp::launcher
