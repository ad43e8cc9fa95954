#pragma once

// What the benchmarks share: medians, timing, the header that says on
// which machine, with which BLAS kernels, CPU flags and threads, a table was
// measured, and the machine's memory bandwidth as a reference for
// memory-bound steps.

#include "bench_common.h"

#include <torchtp/detail/blas_core.h>
#include <torchtp/dtype_names.h>
#include <torchtp/group.h>
#include <torchtp/reduce_op.h>

#include <ATen/Parallel.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace torchtp::bench {

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

/// The flags of /proc/cpuinfo that decide which kernels can run (vector
/// width, bfloat16 and int8 dot products, AMX tiles), those present.
inline std::vector<std::string> kernel_cpu_flags() {
  static const char* const kRelevant[] = {
      "avx2",        "fma",      "avx512f",  "avx512bw", "avx512_bf16",
      "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8"};
  const auto flags = detail::cpu_flags();
  std::vector<std::string> present;
  for (const char* f : kRelevant) {
    if (std::find(flags.begin(), flags.end(), f) != flags.end()) {
      present.emplace_back(f);
    }
  }
  return present;
}

inline nlohmann::json header_json(int world_size) {
  const char* forced = std::getenv("OPENBLAS_CORETYPE");
  const std::string core = detail::openblas_core();
  return {
      {"machine", cpu_model()},
      {"cpu_flags", kernel_cpu_flags()},
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
  std::string flags;
  for (const auto& f : kernel_cpu_flags()) {
    flags += " " + f;
  }
  std::printf(
      "# CPU flags:%s\n",
      flags.empty() ? " none of avx2 and up" : flags.c_str());
}

/// Sum of `n` floats. Eight independent 4-wide sums: one running sum waits
/// for each add's latency and would time the adder, not memory; the sum is
/// returned so the compiler cannot drop the reads.
inline float sum_floats(const float* p, int64_t n) {
  using Vec = float __attribute__((vector_size(16)));
  constexpr int kLanes = 4, kSums = 8;
  Vec sums[kSums] = {};
  int64_t i = 0;
  for (; i + kLanes * kSums <= n; i += kLanes * kSums) {
    for (int k = 0; k < kSums; ++k) {
      Vec v;
      std::memcpy(&v, p + i + k * kLanes, sizeof(v));
      sums[k] += v;
    }
  }
  float total = 0;
  for (; i < n; ++i) {
    total += p[i];
  }
  for (int k = 0; k < kSums; ++k) {
    for (int l = 0; l < kLanes; ++l) {
      total += sums[k][l];
    }
  }
  return total;
}

/// Seconds of one read of `buffer` (float32, contiguous, of ones) with
/// this thread's intra-op threads: the faster of two readers, each rank's
/// chunks summed (at::parallel_reduce), and OpenBLAS's gemv over the buffer
/// as a matrix of 4096 columns (its software prefetch streams faster than a
/// plain loop on some machines: 47 against 30 GB/s on an AMD EPYC VM).
inline double read_seconds(const torch::Tensor& buffer) {
  const float* p = buffer.data_ptr<float>();
  const int64_t n = buffer.numel();
  auto t0 = std::chrono::steady_clock::now();
  const float sum = at::parallel_reduce(
      int64_t{0}, n, int64_t{1} << 16, 0.0f,
      [p](int64_t begin, int64_t end, float partial) {
        return partial + sum_floats(p + begin, end - begin);
      },
      std::plus<float>());
  const double summed = seconds_since(t0);
  // Every element is 1: a wrong sum means a chunk was skipped.
  TORCH_INTERNAL_ASSERT(sum > 0, "read_seconds: bad sum ", sum);
  constexpr int64_t kColumns = 4096;
  const auto matrix = buffer.narrow(0, 0, n / kColumns * kColumns)
                          .view({-1, kColumns});
  const auto ones = torch::ones({kColumns});
  t0 = std::chrono::steady_clock::now();
  const auto rows = at::mv(matrix, ones);
  const double gemv = seconds_since(t0);
  TORCH_INTERNAL_ASSERT(
      rows[0].item<float>() == kColumns, "read_seconds: bad gemv");
  return std::min(summed, gemv);
}

/// Memory bandwidth of streaming reads, in GB/s (1e9 bytes): what bounds
/// a step that reads every weight once, such as decoding one token.
struct ReadBandwidth {
  int64_t bytes = 0; ///< read by each rank per pass
  int passes = 0;    ///< timed passes per figure (median), after one warm-up
  int threads = 0;   ///< a rank's intra-op threads
  /// Each rank alone (the others wait), one thread; the slowest rank.
  double one_thread_gbs = 0;
  /// Each rank alone, all its threads; the slowest rank.
  double rank_threads_gbs = 0;
  /// Every rank at once with all its threads: per rank (bytes over the
  /// slowest rank's time of each pass) and the sum over the ranks.
  double all_ranks_gbs = 0;
  double aggregate_gbs = 0;
  /// Per rank, for the JSON.
  std::vector<double> one_thread_gbs_per_rank, rank_threads_gbs_per_rank;
};

/// Measures `ReadBandwidth` on every rank of `world` (collective): each
/// rank reads a `bytes` buffer of float32, far larger than the caches,
/// summed; first alone, rank after rank, with one thread and then with all
/// its threads, then after a barrier all ranks together. The buffer is
/// freed on return.
inline ReadBandwidth measure_read_bandwidth(
    const torchtp::Group& world,
    int64_t bytes = int64_t{512} << 20,
    int passes = 5) {
  ReadBandwidth bw;
  bw.passes = passes;
  bw.threads = at::get_num_threads();
  // Filled with ones: every page is touched (resident) before any pass.
  auto buffer = torch::ones({bytes / 4}, torch::kFloat);
  bw.bytes = buffer.nbytes();
  const double gb = bw.bytes / 1e9;
  // The thread count is switched once per figure, before the warm-up pass:
  // at::set_num_threads recreates libtorch's pthreadpool, whose new
  // workers spin for several ms before they sleep, taking a core.
  auto median_gbs = [&](int threads, bool together) {
    const int mine = at::get_num_threads();
    if (threads != mine) {
      at::set_num_threads(threads);
    }
    read_seconds(buffer); // warm-up
    std::vector<double> s;
    for (int i = 0; i < passes; ++i) {
      if (together) {
        world.barrier();
      }
      auto t = torch::tensor({read_seconds(buffer)}, torch::kDouble);
      if (together) {
        world.all_reduce(t, torchtp::ReduceOp::max);
      }
      s.push_back(t.item<double>());
    }
    if (threads != mine) {
      at::set_num_threads(mine);
    }
    return gb / median(s);
  };
  const int ws = world.size();
  auto alone = torch::zeros({2, ws}, torch::kDouble);
  for (int r = 0; r < ws; ++r) {
    world.barrier();
    if (world.rank() == r) {
      alone[0][r] = median_gbs(1, false);
      alone[1][r] = median_gbs(bw.threads, false);
    }
  }
  world.all_reduce(alone);
  for (int r = 0; r < ws; ++r) {
    bw.one_thread_gbs_per_rank.push_back(alone[0][r].item<double>());
    bw.rank_threads_gbs_per_rank.push_back(alone[1][r].item<double>());
  }
  bw.one_thread_gbs = alone[0].min().item<double>();
  bw.rank_threads_gbs = alone[1].min().item<double>();
  bw.all_ranks_gbs = median_gbs(bw.threads, true);
  bw.aggregate_gbs = ws * bw.all_ranks_gbs;
  return bw;
}

inline nlohmann::json bandwidth_json(const ReadBandwidth& bw) {
  return {
      {"buffer_bytes", bw.bytes},
      {"passes", bw.passes},
      {"threads_per_rank", bw.threads},
      {"one_thread_gbs", bw.one_thread_gbs},
      {"rank_threads_gbs", bw.rank_threads_gbs},
      {"all_ranks_per_rank_gbs", bw.all_ranks_gbs},
      {"all_ranks_aggregate_gbs", bw.aggregate_gbs},
      {"one_thread_gbs_per_rank", bw.one_thread_gbs_per_rank},
      {"rank_threads_gbs_per_rank", bw.rank_threads_gbs_per_rank}};
}

/// The header lines of `ReadBandwidth`.
inline void print_read_bandwidth(const ReadBandwidth& bw, int world_size) {
  std::printf(
      "# memory read bandwidth (%.0f MiB of float32 per rank, the faster of a sum "
      "and OpenBLAS gemv, median of %d): each rank alone %.1f GB/s with 1 thread, %.1f GB/s with all "
      "%d thread(s) (slowest rank)\n",
      bw.bytes / double(1 << 20), bw.passes, bw.one_thread_gbs,
      bw.rank_threads_gbs, bw.threads);
  std::printf(
      "# all %d rank(s) at once: %.1f GB/s per rank, %.1f GB/s aggregate\n",
      world_size, bw.all_ranks_gbs, bw.aggregate_gbs);
}

} // namespace torchtp::bench
