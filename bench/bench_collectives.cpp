// bench_collectives: latency and bus bandwidth of every Group collective,
// with each communicator side by side and memcpy of the same size as the
// reference, all measured in one run. Rank 0 prints the table and writes
// JSON.
//
//   torchtp-run --nproc-per-node 2 ./bench_collectives [--json out.json]
//
// Bus bandwidth follows nccl-tests: the bytes each rank must move at the
// least, over the time (all-reduce 2(n-1)/n of the message, all-gather and
// reduce-scatter (n-1)/n of the full tensor, broadcast all of it). The two
// communicators alternate, --repeats rounds each, and every figure is the
// median of its rounds: this machine is shared and single runs drift.
// --debug-cost adds each collective's time with TORCHTP_DEBUG's fingerprint
// check (rounds with and without it alternate).

#include <torchtp/torchtp.h>

#include "bench_util.h"
#include "guarded_main.h"

#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>

namespace {

using torchtp::bench::median;
using torchtp::bench::seconds_since;

// Median over `repeats` rounds of the time of one `op`, as the slowest rank
// sees it. Every rank calls it with the same arguments.
struct Timer {
  torchtp::Group sync; // the fastest group: for barriers and the max
  int repeats;
  double budget_s;

  double time_us(const torchtp::Group& g, const std::function<void()>& op) {
    op(); // warm up: first-touch pages, lazy allocations
    g.barrier();
    auto t0 = std::chrono::steady_clock::now();
    op();
    // Same count on every rank: the slowest rank's calibration decides.
    const double once = slowest(seconds_since(t0));
    const int iters = static_cast<int>(
        std::clamp(budget_s / std::max(once, 1e-7), 3.0, 2000.0));
    std::vector<double> rounds;
    for (int r = 0; r < repeats; ++r) {
      g.barrier();
      t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) {
        op();
      }
      rounds.push_back(slowest(seconds_since(t0)) / iters * 1e6);
    }
    return median(rounds);
  }

  double slowest(double value) {
    auto t = torch::tensor({value}, torch::kDouble);
    sync.all_reduce(t, torchtp::ReduceOp::max);
    return t.item<double>();
  }
};

double bus_factor(const std::string& op, int n) {
  if (op == "all_reduce") {
    return 2.0 * (n - 1) / n;
  }
  if (op == "broadcast") {
    return 1.0;
  }
  return double(n - 1) / n;
}

} // namespace

int run(int argc, char** argv) {
  CLI::App app{
      "Latency and bus bandwidth of torchtp collectives: each communicator "
      "(gloo, shm) next to memcpy of the same size, in one run."};
  std::string json_path = "bench_collectives.json";
  std::string csv_path;
  int repeats = 5;
  double budget_ms = 20;
  int64_t min_bytes = 1 << 10;
  int64_t max_bytes = 64 << 20;
  std::vector<std::string> ops = {
      "all_reduce", "all_gather", "reduce_scatter", "broadcast"};
  std::vector<std::string> dtypes = {"float32", "bfloat16"};
  std::vector<std::string> backends = {"gloo", "shm"};
  app.add_option("--json", json_path, "where to write the results");
  app.add_option(
      "--csv", csv_path,
      "also write collective,dtype,bytes,<backend> busbw...,memcpy (GB/s) "
      "for plotting (bench/plot_busbw.sh)");
  app.add_option("--repeats", repeats, "rounds per figure (median)");
  app.add_option(
      "--budget-ms", budget_ms, "time one round aims at (sets iterations)");
  app.add_option("--min-bytes", min_bytes, "smallest message");
  app.add_option("--max-bytes", max_bytes, "largest message");
  app.add_option("--ops", ops, "collectives to time")->delimiter(',');
  app.add_option("--dtypes", dtypes, "float32, bfloat16, float64, float16")
      ->delimiter(',');
  app.add_option("--backends", backends, "communicators to compare")
      ->delimiter(',');
  bool debug_cost = false;
  app.add_flag(
      "--debug-cost", debug_cost,
      "also time each collective with TORCHTP_DEBUG's fingerprint check, "
      "alternating rounds without and with it");
  CLI11_PARSE(app, argc, argv);

  torchtp::Group world = torchtp::init_from_env();
  const int n = world.size();
  std::vector<torchtp::Group> groups;
  for (const auto& b : backends) {
    groups.push_back(world.with_backend(b));
  }
  // Barriers and the cross-rank max go through the fastest communicator.
  torchtp::Group sync = world;
  for (size_t i = 0; i < backends.size(); ++i) {
    if (backends[i] == "shm") {
      sync = groups[i];
    }
  }
  Timer timer{sync, repeats, budget_ms / 1e3};

  if (world.rank() == 0) {
    torchtp::bench::print_header("bench_collectives", n);
    std::printf("%-15s %-9s %10s", "collective", "dtype", "bytes");
    for (const auto& b : backends) {
      std::printf(" %10s %9s", (b + " us").c_str(), (b + " GB/s").c_str());
      if (debug_cost) {
        std::printf(" %12s", (b + " dbg us").c_str());
      }
    }
    std::printf(" %11s", "memcpy GB/s");
    if (backends.size() == 2) {
      std::printf(" %9s %11s", "time b/a", "busbw/memcpy");
    }
    std::printf("\n");
  }
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& op : ops) {
    for (const auto& dtype_name : dtypes) {
      const auto dtype = torchtp::dtype_from_name(dtype_name);
      const int64_t es = c10::elementSize(dtype);
      for (int64_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
        // `bytes` is the full tensor: the all-reduced one, the gathered
        // output, the reduce-scattered input.
        const int64_t elems = std::max<int64_t>(n, bytes / es / n * n);
        const int64_t full = elems * es;
        auto t = torch::ones({elems}, dtype);
        auto part = torch::ones({elems / n}, dtype);
        std::vector<double> us(groups.size()), debug_us(groups.size());
        for (size_t b = 0; b < groups.size(); ++b) {
          const auto& g = groups[b];
          const std::function<void()> call = [&] {
            if (op == "all_reduce") {
              g.all_reduce(t);
            } else if (op == "all_gather") {
              g.all_gather(part, 0);
            } else if (op == "reduce_scatter") {
              g.reduce_scatter(t, 0);
            } else {
              g.broadcast(t, 0);
            }
          };
          if (!debug_cost) {
            us[b] = timer.time_us(g, call);
            continue;
          }
          // Rounds without and with the check alternate, so drift on this
          // shared machine hits both alike.
          Timer once{sync, 1, timer.budget_s};
          std::vector<double> off, on;
          for (int r = 0; r < repeats; ++r) {
            torchtp::set_debug_checks(false);
            off.push_back(once.time_us(g, call));
            torchtp::set_debug_checks(true);
            on.push_back(once.time_us(g, call));
          }
          torchtp::set_debug_checks(false);
          us[b] = median(off);
          debug_us[b] = median(on);
        }
        // memcpy of the same bytes on rank 0 alone, the others waiting.
        double memcpy_us = 0;
        {
          auto src = torch::ones({full}, torch::kByte);
          auto dst = torch::empty({full}, torch::kByte);
          std::vector<double> rounds;
          if (world.rank() == 0) {
            std::memcpy(dst.data_ptr(), src.data_ptr(), full);
            const int iters = std::clamp<int>(
                int(budget_ms * 1e3 / (full / 5e3 + 1)), 3, 5000);
            for (int r = 0; r < repeats; ++r) {
              auto t0 = std::chrono::steady_clock::now();
              for (int i = 0; i < iters; ++i) {
                std::memcpy(dst.data_ptr(), src.data_ptr(), full);
              }
              rounds.push_back(seconds_since(t0) / iters * 1e6);
            }
            memcpy_us = median(rounds);
          }
          sync.barrier();
        }
        if (world.rank() != 0) {
          continue;
        }
        const double factor = bus_factor(op, n);
        const double memcpy_gbps = full / (memcpy_us * 1e3);
        std::printf(
            "%-15s %-9s %10lld", op.c_str(), dtype_name.c_str(),
            (long long)full);
        nlohmann::json row = {
            {"collective", op},
            {"dtype", dtype_name},
            {"bytes", full},
            {"world_size", n},
            {"memcpy_gbps", memcpy_gbps}};
        for (size_t b = 0; b < groups.size(); ++b) {
          const double busbw = n == 1 ? 0 : factor * full / (us[b] * 1e3);
          std::printf(" %10.1f %9.3f", us[b], busbw);
          row[backends[b]] = {{"time_us", us[b]}, {"busbw_gbps", busbw}};
          if (debug_cost) {
            std::printf(" %12.1f", debug_us[b]);
            row[backends[b]]["debug_time_us"] = debug_us[b];
          }
        }
        std::printf(" %11.2f", memcpy_gbps);
        if (groups.size() == 2) {
          const double ratio = us[1] / us[0];
          const double of_memcpy =
              n == 1 ? 0 : factor * full / (us[1] * 1e3) / memcpy_gbps;
          std::printf(" %9.4f %11.2f", ratio, of_memcpy);
          row["time_ratio"] = ratio;
          row["busbw_over_memcpy"] = of_memcpy;
        }
        std::printf("\n");
        std::fflush(stdout);
        rows.push_back(row);
      }
    }
  }
  if (world.rank() == 0) {
    nlohmann::json out = torchtp::bench::header_json(n);
    out["backends"] = backends;
    out["rows"] = rows;
    std::ofstream(json_path) << out.dump(2) << "\n";
    if (!csv_path.empty()) {
      std::ofstream csv(csv_path);
      csv << "collective,dtype,bytes";
      for (const auto& b : backends) {
        csv << "," << b << "_busbw_gbps";
      }
      csv << ",memcpy_gbps\n";
      for (const auto& row : rows) {
        csv << row["collective"].get<std::string>() << ","
            << row["dtype"].get<std::string>() << "," << row["bytes"];
        for (const auto& b : backends) {
          csv << "," << row[b]["busbw_gbps"];
        }
        csv << "," << row["memcpy_gbps"] << "\n";
      }
    }
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "bench_collectives", [&] { return run(argc, argv); });
}
