#include "error_report.h"

#include <nlohmann/json.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>

namespace torchtp::launcher {

void ErrorFiles::create() {
  const char* tmp = getenv("TMPDIR");
  std::string templ =
      std::string(tmp && *tmp ? tmp : "/tmp") + "/torchtp-run.XXXXXX";
  if (mkdtemp(templ.data()) != nullptr)
    dir_ = templ;
}

std::string ErrorFiles::path(int rank) const {
  return dir_.empty() ? "" : dir_ + "/rank" + std::to_string(rank) + ".json";
}

ErrorReport ErrorFiles::read(int rank) const {
  ErrorReport r;
  const std::string file = path(rank);
  std::ifstream in(file);
  if (file.empty() || !in)
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

ErrorReport ErrorFiles::earliest() const {
  ErrorReport first;
  for (int rank = first_rank_; rank < first_rank_ + count_; ++rank) {
    ErrorReport r = read(rank);
    if (r.present && (!first.present || r.timestamp_us < first.timestamp_us))
      first = r;
  }
  return first;
}

void ErrorFiles::remove() const {
  if (dir_.empty())
    return;
  for (int rank = first_rank_; rank < first_rank_ + count_; ++rank) {
    unlink(path(rank).c_str());
    unlink((path(rank) + ".tmp").c_str());
  }
  rmdir(dir_.c_str());
}

std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) {
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  }
  return "exited with code " + std::to_string(WEXITSTATUS(status));
}

} // namespace torchtp::launcher
