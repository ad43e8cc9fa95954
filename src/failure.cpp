#include "torchtp/failure.h"

#include "comm/job_failure.h"

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>

namespace torchtp {
namespace {

std::string message_of(const std::exception& e) {
  const auto* error = dynamic_cast<const c10::Error*>(&e);
  return error ? error->what_without_backtrace() : e.what();
}

// What torchtp-run reads back: one JSON object, as torchrun's error file.
// Written to a temporary name and renamed: the launcher never reads half.
void write_error_file(
    int rank, const std::string& message, const std::string& first) {
  const char* path = std::getenv("TORCHTP_ERROR_FILE");
  if (path == nullptr || *path == '\0') {
    return;
  }
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  nlohmann::json j = {
      {"rank", rank},
      {"message", message},
      {"root_cause", first},
      {"timestamp_us",
       std::chrono::duration_cast<std::chrono::microseconds>(now).count()},
  };
  const std::string tmp = std::string(path) + ".tmp";
  {
    std::ofstream out(tmp);
    // Invalid UTF-8 in a message must not lose the report.
    out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
        << "\n";
    if (!out) {
      return;
    }
  }
  std::rename(tmp.c_str(), path);
}

std::terminate_handler previous_terminate = nullptr;

[[noreturn]] void report_then_terminate() {
  if (auto e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& error) {
      report_failure(error);
    } catch (...) {
    }
  }
  (previous_terminate != nullptr ? previous_terminate : std::abort)();
  std::abort();
}

} // namespace

std::string report_failure(const std::exception& error) {
  try {
    auto& job = detail::JobFailure::get();
    const int rank = job.world_rank();
    const std::string mine =
        "rank " + std::to_string(rank) + " raised: " + message_of(error);
    const std::string first = job.report(mine);
    write_error_file(rank, mine, first);
    return first;
  } catch (...) {
    return message_of(error);
  }
}

namespace detail {

void install_terminate_report() {
  static std::once_flag once;
  std::call_once(once, [] {
    previous_terminate = std::set_terminate(report_then_terminate);
  });
}

} // namespace detail
} // namespace torchtp
