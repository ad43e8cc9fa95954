#pragma once

// The main() of torchtp's programs (examples, benchmarks): errors end the
// program with one line and exit code 1 instead of an abort, and are
// reported to the job (torchtp::report_failure), so that the other ranks
// stop waiting and say which rank failed first, and the launcher prints it.

#include <torchtp/failure.h>

#include <c10/util/Exception.h>

#include <cstdio>
#include <exception>

namespace torchtp::tools {

template <typename Run>
int guarded_main(const char* program, Run&& run) {
  try {
    return run();
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what_without_backtrace());
    torchtp::report_failure(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    torchtp::report_failure(e);
  }
  return 1;
}

} // namespace torchtp::tools
