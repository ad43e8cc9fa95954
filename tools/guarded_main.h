#pragma once

// The main() of torchtp's programs (examples, benchmarks): errors end the
// program with one line and exit code 1 instead of an abort, so the launcher
// reports the rank's code and stops the others.

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
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
  }
  return 1;
}

} // namespace torchtp::tools
