#include "metrics.h"

#include <sstream>

namespace torchtp::serve {

void Histogram::observe(double seconds) {
  for (size_t i = 0; i < kBounds.size(); ++i) {
    counts_[i] += seconds <= kBounds[i];
  }
  ++count_;
  sum_ += seconds;
}

std::string Histogram::render(
    const std::string& name, const std::string& help) const {
  std::ostringstream out;
  out << "# HELP " << name << " " << help << "\n# TYPE " << name
      << " histogram\n";
  for (size_t i = 0; i < kBounds.size(); ++i) {
    out << name << "_bucket{le=\"" << kBounds[i] << "\"} " << counts_[i]
        << "\n";
  }
  out << name << "_bucket{le=\"+Inf\"} " << count_ << "\n"
      << name << "_sum " << sum_ << "\n"
      << name << "_count " << count_ << "\n";
  return out.str();
}

void Metrics::time_to_first_token(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  first_token_.observe(seconds);
}

void Metrics::inter_token(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  inter_token_.observe(seconds);
}

void Metrics::finished(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++finished_[reason];
}

void Metrics::rejected(int status) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++rejected_[status];
}

void Metrics::engine(const EngineStats& stats) {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_ = stats;
  const auto now = std::chrono::steady_clock::now();
  recent_.emplace_back(now, stats.generated_tokens);
  while (recent_.size() > 2 &&
         now - recent_.front().first > std::chrono::seconds(10)) {
    recent_.pop_front();
  }
}

std::string Metrics::render() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::ostringstream out;
  auto gauge = [&](const char* name, const char* help, double value) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name
        << " gauge\n"
        << name << " " << value << "\n";
  };
  auto counter = [&](const char* name, const char* help, double value) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name
        << " counter\n"
        << name << " " << value << "\n";
  };
  gauge("torchtp_requests_waiting", "Requests queued for room.",
        stats_.waiting);
  gauge("torchtp_requests_running", "Requests in the running batch.",
        stats_.running);
  gauge("torchtp_kv_blocks_used", "Key/value blocks held by requests.",
        stats_.blocks_used);
  gauge("torchtp_kv_blocks_total", "Key/value blocks in the pool.",
        stats_.blocks_total);
  counter("torchtp_engine_steps_total", "Engine steps that ran the model.",
          stats_.steps);
  counter("torchtp_prompt_tokens_total", "Prompt tokens prefilled.",
          stats_.prompt_tokens);
  counter("torchtp_generation_tokens_total", "Tokens generated.",
          stats_.generated_tokens);
  counter("torchtp_preemptions_total",
          "Times a running request gave its key/value blocks to others "
          "(recomputed when it runs again).",
          stats_.preemptions);
  double rate = 0;
  if (recent_.size() >= 2) {
    const double seconds = std::chrono::duration<double>(
                               recent_.back().first - recent_.front().first)
                               .count();
    rate = seconds > 0
        ? (recent_.back().second - recent_.front().second) / seconds
        : 0;
  }
  gauge("torchtp_generation_tokens_per_second",
        "Tokens generated per second over the last ten seconds.", rate);
  out << "# HELP torchtp_requests_finished_total Requests ended, by reason.\n"
         "# TYPE torchtp_requests_finished_total counter\n";
  for (const auto& [reason, n] : finished_) {
    out << "torchtp_requests_finished_total{reason=\"" << reason << "\"} "
        << n << "\n";
  }
  out << "# HELP torchtp_requests_rejected_total Requests refused, by HTTP "
         "status.\n# TYPE torchtp_requests_rejected_total counter\n";
  for (const auto& [status, n] : rejected_) {
    out << "torchtp_requests_rejected_total{status=\"" << status << "\"} "
        << n << "\n";
  }
  out << first_token_.render(
      "torchtp_time_to_first_token_seconds",
      "From a request's arrival to its first token.");
  out << inter_token_.render(
      "torchtp_inter_token_latency_seconds",
      "Between a request's consecutive tokens.");
  return out.str();
}

} // namespace torchtp::serve
