#pragma once

// What the benchmarks share: medians, timing, and the header that says on
// which machine, with which BLAS kernels and threads, a table was measured.

#include "bench_common.h"

#include <torchtp/detail/blas_core.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace torchtp::bench {

inline torch::Dtype parse_dtype(const std::string& name) {
  if (name == "float32") {
    return torch::kFloat;
  }
  if (name == "float64") {
    return torch::kDouble;
  }
  if (name == "bfloat16") {
    return torch::kBFloat16;
  }
  if (name == "float16") {
    return torch::kHalf;
  }
  TORCH_CHECK(
      false, "unknown dtype '", name,
      "' (float32, float64, bfloat16, float16)");
}

/// VmHWM (peak) or VmRSS (now) of this process, in MiB.
inline double resident_mib(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) {
      std::istringstream fields(line.substr(line.find(':') + 1));
      double kib = 0;
      fields >> kib;
      return kib / 1024;
    }
  }
  return 0;
}

/// Starts a new peak: VmHWM drops to the current VmRSS (Linux's
/// /proc/self/clear_refs "5"). False where the kernel refuses.
inline bool reset_peak_resident() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

inline nlohmann::json header_json(int world_size) {
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  const std::string core = detail::openblas_core();
  return {
      {"machine", cpu_model()},
      {"blas_core", core.empty() ? "not OpenBLAS" : core},
      {"openblas_coretype_env", forced ? forced : ""},
      {"world_size", world_size},
      {"threads_per_rank", at::get_num_threads()}};
}

inline void print_header(const char* program, int world_size) {
  const auto h = header_json(world_size);
  std::printf(
      "# %s on %s; BLAS core %s; world size %d, %d intra-op thread(s) per "
      "rank\n",
      program, h["machine"].get<std::string>().c_str(),
      h["blas_core"].get<std::string>().c_str(), world_size,
      at::get_num_threads());
}

} // namespace torchtp::bench
