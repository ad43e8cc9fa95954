// bench_layers: forward+backward step time and parameter memory of each
// torchtp layer on this rank, next to the same unsharded computation measured
// in the same run. Prints a table on rank 0 and writes JSON.
//
//   torchtp-run --nproc-per-node 2 ./bench_layers [--iters 10] [--json F]
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

/// Every case, parallel over `g` (the default group) and unsharded. Built
/// after the same seed on every rank, so the ranks hold slices of the same
/// full weights (the times do not depend on it, but the layers are then
/// the ones a real run would have).
std::vector<Case> make_cases(const torchtp::Group& g, const Shape& s) {
  using namespace torchtp;
  const int64_t d = s.d_model, h = 4 * d, t = s.tokens;
  const Group self = Group::self();
  auto tokens_x = [&](int64_t width) { return torch::randn({t, width}); };
  auto seq_x = [&] { return torch::randn({s.batch(), s.seq, d}); };
  std::vector<Case> cases;

  cases.push_back(
      {"ColumnParallelLinear",
       make_side(
           ColumnParallelLinear(ColumnParallelLinearOptions(d, h)),
           tokens_x(d)),
       make_side(torch::nn::Linear(d, h), tokens_x(d))});
  // input_is_parallel: each rank gets its [tokens, 4d / ws] slice, as the
  // output of a ColumnParallelLinear would be.
  cases.push_back(
      {"RowParallelLinear",
       make_side(
           RowParallelLinear(
               RowParallelLinearOptions(h, d).input_is_parallel(true)),
           tokens_x(h / g.size())),
       make_side(torch::nn::Linear(h, d), tokens_x(h))});
  cases.push_back(
      {"ParallelMLP",
       make_side(ParallelMLP(ParallelMLPOptions(d, h)), tokens_x(d)),
       make_side(
           ParallelMLP(ParallelMLPOptions(d, h).group(self)), tokens_x(d))});
  cases.push_back(
      {"ParallelSelfAttention",
       make_side(
           ParallelSelfAttention(ParallelSelfAttentionOptions(d, s.heads)),
           seq_x()),
       make_side(
           ParallelSelfAttention(
               ParallelSelfAttentionOptions(d, s.heads).group(self)),
           seq_x())});
  cases.push_back(
      {"TransformerLayer",
       make_side(
           TransformerLayer(TransformerLayerOptions(d, s.heads)), seq_x()),
       make_side(
           TransformerLayer(TransformerLayerOptions(d, s.heads).group(self)),
           seq_x())});
  return cases;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

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
/// cores.
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

struct Timing {
  double parallel_ms, unsharded_ms;
};

/// Medians of interleaved steps: the parallel one on the slowest rank, the
/// unsharded one on rank 0 alone.
Timing measure(
    const torchtp::Group& g, const Case& c, int iters, int all_threads) {
  constexpr int kWarmup = 2;
  for (int i = 0; i < kWarmup; ++i) {
    time_step(g, c.parallel);
    time_alone(g, c.unsharded, all_threads);
  }
  std::vector<double> par, uns;
  for (int i = 0; i < iters; ++i) {
    par.push_back(time_step(g, c.parallel));
    uns.push_back(time_alone(g, c.unsharded, all_threads));
  }
  auto worst = torch::tensor({median(par), median(uns)}, torch::kDouble);
  g.all_reduce(worst, torchtp::ReduceOp::max);
  return {worst[0].item<double>(), worst[1].item<double>()};
}

int run(int argc, char** argv) {
  CLI::App app{
      "Forward+backward step time and parameter memory of each torchtp\n"
      "layer on this rank, next to the same unsharded module timed in the\n"
      "same run (interleaved steps, median), float32. The unsharded step\n"
      "runs on rank 0 alone with every core; the parallel step on every\n"
      "rank with cores / local ranks threads (slowest rank counts).\n"
      "Run: torchtp-run --nproc-per-node 2 ./bench_layers [--iters 10]"};
  std::string json_path = "bench_layers.json";
  Shape s{512, 8, 512, 128};
  int iters = 10;
  app.option_defaults()->always_capture_default(); // --help shows them
  app.add_option("--d-model", s.d_model, "model width d (MLP hidden 4d)")
      ->check(CLI::PositiveNumber);
  app.add_option("--heads", s.heads, "attention heads")
      ->check(CLI::PositiveNumber);
  app.add_option("--tokens", s.tokens, "tokens per step (batch x seq)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seq", s.seq, "sequence length of attention and layer")
      ->check(CLI::PositiveNumber);
  app.add_option("--iters", iters, "timed steps of each side per case")
      ->check(CLI::PositiveNumber);
  app.add_option("--json", json_path, "where to write the results");
  CLI11_PARSE(app, argc, argv);

  torchtp::Group g = torchtp::init_from_env();
  TORCH_CHECK(
      s.tokens % s.seq == 0, "--tokens (", s.tokens,
      ") is not a multiple of --seq (", s.seq, ")");
  // The parallel side runs with the threads init_from_env set from
  // OMP_NUM_THREADS (torchtp-run: cores / N); the unsharded one with all.
  const int threads = at::get_num_threads();
  const int cores =
      std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  torch::manual_seed(0);
  const std::vector<Case> cases = make_cases(g, s);

  const bool root = g.rank() == 0;
  if (root) {
    std::printf(
        "# world size %d: parallel on every rank with %d intra-op "
        "thread(s) each; unsharded on rank 0 alone with %d\n"
        "# d_model %lld, heads %lld, tokens %lld (%lld x %lld), float32, "
        "median of %d steps\n",
        g.size(), threads, cores, (long long)s.d_model, (long long)s.heads,
        (long long)s.tokens, (long long)s.batch(), (long long)s.seq, iters);
    std::printf(
        "%-22s %10s %10s %8s %10s %10s %6s\n", "case", "par ms", "unsh ms",
        "speedup", "par MB", "unsh MB", "mem x");
  }
  constexpr double kMB = 1 << 20;
  nlohmann::json rows = nlohmann::json::array();
  for (const Case& c : cases) {
    const Timing t = measure(g, c, iters, cores);
    const double speedup = t.unsharded_ms / t.parallel_ms;
    const double mem_ratio =
        double(c.unsharded.param_bytes) / c.parallel.param_bytes;
    if (root) {
      std::printf(
          "%-22s %10.2f %10.2f %8.2f %10.2f %10.2f %6.2f\n", c.name.c_str(),
          t.parallel_ms, t.unsharded_ms, speedup, c.parallel.param_bytes / kMB,
          c.unsharded.param_bytes / kMB, mem_ratio);
      std::fflush(stdout);
    }
    rows.push_back(
        {{"case", c.name},
         {"parallel_ms", t.parallel_ms},
         {"unsharded_ms", t.unsharded_ms},
         {"speedup", speedup},
         {"params_bytes_parallel", c.parallel.param_bytes},
         {"params_bytes_unsharded", c.unsharded.param_bytes},
         {"memory_ratio", mem_ratio}});
  }
  if (root) {
    const nlohmann::json out = {
        {"world_size", g.size()}, {"threads_per_rank", threads},
        {"cores", cores},         {"d_model", s.d_model},
        {"heads", s.heads},       {"tokens", s.tokens},
        {"seq", s.seq},           {"dtype", "float32"},
        {"iters", iters},         {"rows", rows}};
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
