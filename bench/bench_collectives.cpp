// bench_collectives: latency and bus bandwidth of the Group collectives over
// message sizes, run under torchtp-run. Prints a table on rank 0 and writes
// JSON.
//
//   torchtp-run --nproc-per-node 2 ./bench_collectives [--json out.json]
//
// Bus bandwidth follows nccl-tests: the bytes each rank must move for the
// algorithm-independent lower bound, over the time (all-reduce 2(n-1)/n of
// the message, all-gather and reduce-scatter (n-1)/n).

#include <torchtp/torchtp.h>

#include "guarded_main.h"

#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>

int run(int argc, char** argv) {
  CLI::App app{"Latency and bus bandwidth of torchtp collectives (float32)."};
  std::string json_path = "bench_collectives.json";
  int iters = 20;
  int64_t max_bytes = 16 << 20;
  app.add_option("--json", json_path, "where to write the results");
  app.add_option("--iters", iters, "timed iterations per size");
  app.add_option("--max-bytes", max_bytes, "largest message");
  CLI11_PARSE(app, argc, argv);

  torchtp::Group g = torchtp::init_from_env();
  const int n = g.size();
  nlohmann::json rows = nlohmann::json::array();
  if (g.rank() == 0) {
    std::printf(
        "%-15s %12s %12s %12s\n", "collective", "bytes", "time (us)",
        "busbw (GB/s)");
  }
  for (const std::string op : {"all_reduce", "all_gather", "reduce_scatter"}) {
    for (int64_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
      const int64_t elems = std::max<int64_t>(n, bytes / 4 / n * n);
      auto t = torch::ones({elems});
      auto run = [&] {
        if (op == "all_reduce") {
          g.all_reduce(t);
        } else if (op == "all_gather") {
          g.all_gather(t.narrow(0, 0, elems / n), 0);
        } else {
          g.reduce_scatter(t, 0);
        }
      };
      run();
      g.barrier();
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) {
        run();
      }
      double us = std::chrono::duration<double, std::micro>(
                      std::chrono::steady_clock::now() - t0)
                      .count() /
                  iters;
      // The slowest rank's time is the collective's time.
      auto worst = torch::tensor({us}, torch::kDouble);
      g.all_reduce(worst, torchtp::ReduceOp::max);
      us = worst.item<double>();
      const double factor =
          op == "all_reduce" ? 2.0 * (n - 1) / n : double(n - 1) / n;
      const double busbw = n == 1 ? 0 : factor * elems * 4 / (us * 1e3);
      if (g.rank() == 0) {
        std::printf(
            "%-15s %12lld %12.1f %12.3f\n", op.c_str(), (long long)(elems * 4),
            us, busbw);
        rows.push_back(
            {{"collective", op},
             {"bytes", elems * 4},
             {"world_size", n},
             {"time_us", us},
             {"busbw_gbps", busbw}});
      }
    }
  }
  if (g.rank() == 0) {
    std::ofstream(json_path) << rows.dump(2) << "\n";
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "bench_collectives", [&] { return run(argc, argv); });
}
