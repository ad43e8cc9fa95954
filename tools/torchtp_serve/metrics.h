#pragma once

// What /metrics reports, in Prometheus' text format: the engine's queue,
// running requests and key/value blocks, token counters and rate, and
// histograms of time to first token and inter-token latency.

#include <torchtp/engine.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>

namespace torchtp::serve {

class Histogram {
 public:
  void observe(double seconds);
  /// Prometheus lines for `name` (buckets, sum, count).
  std::string render(const std::string& name, const std::string& help) const;

 private:
  static constexpr std::array<double, 14> kBounds = {
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
      0.25,  0.5,    1,     2.5,  5,    10,  30};
  std::array<int64_t, kBounds.size()> counts_{};
  int64_t count_ = 0;
  double sum_ = 0;
};

class Metrics {
 public:
  void time_to_first_token(double seconds);
  void inter_token(double seconds);
  void finished(const std::string& reason);
  void rejected(int status);
  /// The engine's state after a step, and the tokens it generated.
  void engine(const EngineStats& stats);
  std::string render() const;

 private:
  mutable std::mutex mutex_;
  Histogram first_token_, inter_token_;
  std::map<std::string, int64_t> finished_;
  std::map<int, int64_t> rejected_;
  EngineStats stats_;
  // (time, generated tokens so far) over the last ten seconds: the rate.
  std::deque<std::pair<std::chrono::steady_clock::time_point, int64_t>>
      recent_;
};

} // namespace torchtp::serve
