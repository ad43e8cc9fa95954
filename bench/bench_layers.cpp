// bench_layers: forward+backward step time and parameter memory of each
// torchtp layer on this rank, next to the same unsharded computation measured
// in the same run. Prints a table on rank 0 and writes JSON.
//
//   torchtp-run --nproc-per-node 2 ./bench_layers [--iters 10] [--json F]
//       [--shapes 128x8,1024x64] [--cases ParallelMLP] [--backends gloo,shm]
//
// Each shape is d_model x tokens; every case runs once per communicator
// (the same ranks, connected by Group::with_backend), so the table shows
// gloo and shm next to the unsharded step of the same run.
//
// The machine may be shared and noisy, so absolute times mean little: the
// result is the ratio unsharded / parallel, with both sides timed in
// alternating steps (parallel, unsharded, parallel, ...) so a change of load
// hits both. Each side's time is the median of its steps.
//
// The baseline is what a user would otherwise run: ONE process owning every
// core. So the unsharded step runs on rank 0 alone, with as many intra-op
// threads as the host has cores, while the other ranks wait at a barrier;
// the parallel step runs on every rank with its own threads (torchtp-run:
// cores / N) and counts as its slowest rank's time.
//
// The unsharded side is the plain module: torch::nn::Linear for the two
// linear layers, and for the blocks the same torchtp block built on
// torchtp::Group::self(), whose mappings are identities, so it is exactly
// the unsharded computation with no communication.

#include <torchtp/torchtp.h>

#include "bench_util.h"
#include "guarded_main.h"

#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

/// One side of a case: a forward+backward step, and the bytes of parameters
/// this rank holds for it.
struct Side {
  std::function<void()> step;
  int64_t param_bytes = 0;
};

/// A layer in its tensor-parallel form and in its unsharded form.
struct Case {
  std::string name;
  Side parallel;
  Side unsharded;
};

int64_t param_bytes(const torch::nn::Module& module) {
  int64_t bytes = 0;
  for (const auto& p : module.parameters()) {
    bytes += p.numel() * static_cast<int64_t>(p.element_size());
  }
  return bytes;
}

/// A step on `module` (any torch module holder with forward(Tensor)). The
/// input requires grad, as inside a network, so the backward computes the
/// input gradient: for a ColumnParallelLinear that gradient is the
/// all-reduce, which must be part of the measured step.
template <typename Module>
Side make_side(Module module, torch::Tensor input) {
  input.requires_grad_(true);
  Side side;
  side.param_bytes = param_bytes(*module);
  side.step = [module, input]() mutable {
    // set_to_none: neither side pays for zero-filling last step's grads.
    module->zero_grad(/*set_to_none=*/true);
    input.mutable_grad().reset();
    module->forward(input).sum().backward();
  };
  return side;
}

struct Shape {
  int64_t d_model, heads, tokens, seq;
  int64_t batch() const {
    return tokens / seq;
  }
};

/// The `wanted` cases, parallel over `g` and unsharded. Built
/// after the same seed on every rank, so the ranks hold slices of the same
/// full weights (the times do not depend on it, but the layers are then
/// the ones a real run would have).
std::vector<Case> make_cases(
    const torchtp::Group& g,
    const Shape& s,
    const std::vector<std::string>& wanted) {
  using namespace torchtp;
  const int64_t d = s.d_model, h = 4 * d, t = s.tokens;
  const Group self = Group::self();
  auto tokens_x = [&](int64_t width) { return torch::randn({t, width}); };
  auto seq_x = [&] { return torch::randn({s.batch(), s.seq, d}); };
  std::vector<Case> cases;

  cases.push_back(
      {"ColumnParallelLinear",
       make_side(
           ColumnParallelLinear(ColumnParallelLinearOptions(d, h).group(g)),
           tokens_x(d)),
       make_side(torch::nn::Linear(d, h), tokens_x(d))});
  // input_is_parallel: each rank gets its [tokens, 4d / ws] slice, as the
  // output of a ColumnParallelLinear would be.
  cases.push_back(
      {"RowParallelLinear",
       make_side(
           RowParallelLinear(RowParallelLinearOptions(h, d)
                                 .input_is_parallel(true)
                                 .group(g)),
           tokens_x(h / g.size())),
       make_side(torch::nn::Linear(h, d), tokens_x(h))});
  cases.push_back(
      {"ParallelMLP",
       make_side(ParallelMLP(ParallelMLPOptions(d, h).group(g)), tokens_x(d)),
       make_side(
           ParallelMLP(ParallelMLPOptions(d, h).group(self)), tokens_x(d))});
  cases.push_back(
      {"ParallelSelfAttention",
       make_side(
           ParallelSelfAttention(
               ParallelSelfAttentionOptions(d, s.heads).group(g)),
           seq_x()),
       make_side(
           ParallelSelfAttention(
               ParallelSelfAttentionOptions(d, s.heads).group(self)),
           seq_x())});
  cases.push_back(
      {"TransformerLayer",
       make_side(
           TransformerLayer(TransformerLayerOptions(d, s.heads).group(g)),
           seq_x()),
       make_side(
           TransformerLayer(TransformerLayerOptions(d, s.heads).group(self)),
           seq_x())});
  std::vector<Case> kept;
  for (auto& c : cases) {
    if (std::find(wanted.begin(), wanted.end(), c.name) != wanted.end()) {
      kept.push_back(std::move(c));
    }
  }
  return kept;
}

using torchtp::bench::median;

/// Milliseconds of one parallel step, on every rank. The barrier (not
/// timed) starts the ranks together.
double time_step(const torchtp::Group& g, const Side& side) {
  g.barrier();
  const auto t0 = std::chrono::steady_clock::now();
  side.step();
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now() - t0)
      .count();
}

/// Milliseconds of one unsharded step on rank 0 alone with `all_threads`
/// intra-op threads (0 elsewhere); the other ranks wait, leaving it the
/// cores: the barrier does not busy-wait (shm spins 50 us, yields for
/// 500 us, then sleeps on a futex; a waiting rank was measured using about
/// 1% of a core while rank 0 ran ParallelMLP 1024x64).
double time_alone(const torchtp::Group& g, const Side& side, int all_threads) {
  g.barrier();
  double ms = 0;
  if (g.rank() == 0) {
    const int mine = at::get_num_threads();
    at::set_num_threads(all_threads);
    const auto t0 = std::chrono::steady_clock::now();
    side.step();
    ms = std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now() - t0)
             .count();
    at::set_num_threads(mine);
  }
  g.barrier();
  return ms;
}

/// Medians of interleaved steps: each parallel side (one per communicator)
/// on the slowest rank, the unsharded one on rank 0 alone with every core
/// and with one thread (OpenBLAS threads small GEMMs badly: one thread can
/// be the faster baseline). Returns the parallel medians, then the two
/// unsharded ones.
std::vector<double> measure(
    const torchtp::Group& world,
    const std::vector<const Side*>& parallel,
    const Side& unsharded,
    int iters,
    int all_threads) {
  constexpr int kWarmup = 2;
  const size_t n = parallel.size();
  std::vector<std::vector<double>> ms(n + 2);
  for (int i = 0; i < kWarmup + iters; ++i) {
    std::vector<double> t;
    for (size_t b = 0; b < n; ++b) {
      t.push_back(time_step(world, *parallel[b]));
    }
    t.push_back(time_alone(world, unsharded, all_threads));
    t.push_back(time_alone(world, unsharded, 1));
    for (size_t k = 0; i >= kWarmup && k < t.size(); ++k) {
      ms[k].push_back(t[k]);
    }
  }
  std::vector<double> medians;
  for (const auto& m : ms) {
    medians.push_back(median(m));
  }
  auto worst = torch::tensor(medians, torch::kDouble);
  world.all_reduce(worst, torchtp::ReduceOp::max);
  return std::vector<double>(
      worst.data_ptr<double>(), worst.data_ptr<double>() + worst.numel());
}

std::vector<Shape> parse_shapes(const std::vector<std::string>& texts) {
  std::vector<Shape> shapes;
  for (const auto& t : texts) {
    const auto x = t.find('x');
    TORCH_CHECK(
        x != std::string::npos, "--shapes: '", t,
        "' is not D_MODELxTOKENS (e.g. 1024x64)");
    shapes.push_back({std::stoll(t.substr(0, x)), 0, std::stoll(t.substr(x + 1)), 0});
  }
  return shapes;
}

int run(int argc, char** argv) {
  CLI::App app{
      "Forward+backward step time and parameter memory of each torchtp\n"
      "layer on this rank, next to the same unsharded module timed in the\n"
      "same run (interleaved steps, median), float32, once per communicator.\n"
      "The unsharded step runs on rank 0 alone with every core; the parallel\n"
      "step on every rank with cores / local ranks threads (slowest rank\n"
      "counts). 'speedup' is the faster unsharded step (every core, or one\n"
      "thread) over the parallel one: above 1, tensor parallelism wins.\n"
      "Run: torchtp-run --nproc-per-node 2 ./bench_layers [--iters 10]"};
  std::string json_path = "bench_layers.json";
  std::vector<std::string> shape_texts = {"512x512"};
  std::vector<std::string> backends = {"gloo", "shm"};
  std::vector<std::string> wanted = {
      "ColumnParallelLinear", "RowParallelLinear", "ParallelMLP",
      "ParallelSelfAttention", "TransformerLayer"};
  int64_t heads = 8, seq = 128;
  int iters = 10;
  app.option_defaults()->always_capture_default(); // --help shows them
  app.add_option(
         "--shapes", shape_texts,
         "d_model x tokens per step, e.g. 128x8,1024x64 (MLP hidden 4d)")
      ->delimiter(',');
  app.add_option("--cases", wanted, "layers and blocks to time")
      ->delimiter(',');
  app.add_option("--backends", backends, "communicators (gloo, shm)")
      ->delimiter(',');
  app.add_option("--heads", heads, "attention heads")
      ->check(CLI::PositiveNumber);
  app.add_option(
         "--seq", seq,
         "sequence length of attention and layer (at most the tokens)")
      ->check(CLI::PositiveNumber);
  app.add_option("--iters", iters, "timed steps of each side per case")
      ->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "where to write the results");
  CLI11_PARSE(app, argc, argv);

  torchtp::Group world = torchtp::init_from_env();
  std::vector<torchtp::Group> groups;
  for (const auto& b : backends) {
    groups.push_back(world.with_backend(b));
  }
  // The parallel side runs with the threads init_from_env set from
  // OMP_NUM_THREADS (torchtp-run: cores / N); the unsharded one with all.
  const int threads = at::get_num_threads();
  const int cores =
      std::max(1, static_cast<int>(std::thread::hardware_concurrency()));

  const bool root = world.rank() == 0;
  if (root) {
    torchtp::bench::print_header("bench_layers", world.size());
    std::printf(
        "# parallel on every rank with %d intra-op thread(s) each; unsharded "
        "on rank 0 alone with %d; float32, median of %d steps\n",
        threads, cores, iters);
    std::printf(
        "%-22s %11s %10s %10s", "case", "d x tokens", "unsh ms", "unsh1 ms");
    for (const auto& b : backends) {
      std::printf(" %10s %8s", (b + " ms").c_str(), "speedup");
    }
    std::printf(" %8s %8s\n", "par MB", "unsh MB");
  }
  constexpr double kMB = 1 << 20;
  nlohmann::json rows = nlohmann::json::array();
  for (Shape s : parse_shapes(shape_texts)) {
    s.heads = heads;
    s.seq = std::min(seq, s.tokens);
    TORCH_CHECK(
        s.tokens % s.seq == 0, "tokens (", s.tokens,
        ") is not a multiple of --seq (", s.seq, ")");
    // The same seed for every communicator: the same full weights.
    std::vector<std::vector<Case>> per_backend;
    for (const auto& g : groups) {
      torch::manual_seed(0);
      per_backend.push_back(make_cases(g, s, wanted));
    }
    for (size_t c = 0; c < per_backend[0].size(); ++c) {
      std::vector<const Side*> sides;
      for (const auto& cases : per_backend) {
        sides.push_back(&cases[c].parallel);
      }
      const Case& first = per_backend[0][c];
      const auto ms = measure(world, sides, first.unsharded, iters, cores);
      const double all_cores_ms = ms[ms.size() - 2];
      const double one_thread_ms = ms.back();
      const double unsharded_ms = std::min(all_cores_ms, one_thread_ms);
      nlohmann::json row = {
          {"case", first.name},
          {"d_model", s.d_model},
          {"tokens", s.tokens},
          {"unsharded_ms", unsharded_ms},
          {"unsharded_all_cores_ms", all_cores_ms},
          {"unsharded_one_thread_ms", one_thread_ms},
          {"params_bytes_parallel", first.parallel.param_bytes},
          {"params_bytes_unsharded", first.unsharded.param_bytes}};
      if (root) {
        const std::string shape =
            std::to_string(s.d_model) + "x" + std::to_string(s.tokens);
        std::printf(
            "%-22s %11s %10.3f %10.3f", first.name.c_str(), shape.c_str(),
            all_cores_ms, one_thread_ms);
      }
      for (size_t b = 0; b < backends.size(); ++b) {
        const double speedup = unsharded_ms / ms[b];
        row[backends[b]] = {{"parallel_ms", ms[b]}, {"speedup", speedup}};
        if (root) {
          std::printf(" %10.3f %8.2f", ms[b], speedup);
        }
      }
      if (root) {
        std::printf(
            " %8.2f %8.2f\n", first.parallel.param_bytes / kMB,
            first.unsharded.param_bytes / kMB);
        std::fflush(stdout);
      }
      rows.push_back(row);
    }
  }
  if (root) {
    nlohmann::json out = torchtp::bench::header_json(world.size());
    out["cores"] = cores;
    out["heads"] = heads;
    out["dtype"] = "float32";
    out["iters"] = iters;
    out["backends"] = backends;
    out["rows"] = rows;
    std::ofstream(json_path) << out.dump(2) << "\n";
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "bench_layers", [&] { return run(argc, argv); });
}
