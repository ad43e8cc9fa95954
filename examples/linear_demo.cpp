// linear_demo: a tensor-parallel MLP block (ColumnParallelLinear -> GELU ->
// RowParallelLinear) next to the same block unsharded, on every rank. Prints
// how far apart their outputs and gradients are, and the step time of each.
//
//   torchtp-run --nproc-per-node 2 ./linear_demo [--hidden 1024] [--tokens 256]

#include <torchtp/torchtp.h>

#include "guarded_main.h"

#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>

namespace F = torch::nn::functional;

int run(int argc, char** argv) {
  CLI::App app{
      "A tensor-parallel MLP block checked against the unsharded block.\n"
      "Run it under torchtp-run, e.g.\n"
      "  torchtp-run --nproc-per-node 2 ./linear_demo"};
  int64_t d_model = 512, tokens = 256;
  int steps = 10;
  app.add_option("--d-model", d_model, "model width (hidden = 4 x d-model)");
  app.add_option("--tokens", tokens, "tokens per batch");
  app.add_option("--steps", steps, "timed forward+backward steps");
  CLI11_PARSE(app, argc, argv);

  torchtp::Group world = torchtp::init_from_env();
  const int64_t hidden = 4 * d_model;
  torch::manual_seed(0); // same seed on every rank: same full weights
  torchtp::ColumnParallelLinear fc1(
      torchtp::ColumnParallelLinearOptions(d_model, hidden));
  torchtp::RowParallelLinear fc2(
      torchtp::RowParallelLinearOptions(hidden, d_model)
          .input_is_parallel(true));
  torch::manual_seed(0); // the same draws again, unsharded
  torch::nn::Linear ref1(d_model, hidden), ref2(hidden, d_model);
  auto x = torch::randn({tokens, d_model});

  auto time_steps = [&](auto&& step) {
    step(); // warm-up
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) {
      step();
    }
    std::chrono::duration<double, std::milli> dt =
        std::chrono::steady_clock::now() - t0;
    return dt.count() / steps;
  };

  auto xs = x.clone().requires_grad_();
  torch::Tensor y;
  double tp_ms = time_steps([&] {
    fc1->zero_grad();
    fc2->zero_grad();
    xs.mutable_grad() = torch::Tensor();
    y = fc2(torch::gelu(fc1(xs)));
    y.sum().backward();
  });
  auto xr = x.clone().requires_grad_();
  torch::Tensor yr;
  double ref_ms = time_steps([&] {
    ref1->zero_grad();
    ref2->zero_grad();
    xr.mutable_grad() = torch::Tensor();
    yr = ref2(torch::gelu(ref1(xr)));
    yr.sum().backward();
  });

  const auto h = fc1->output_partition();
  auto diff = [](const torch::Tensor& a, const torch::Tensor& b) {
    return (a - b).abs().max().item<double>();
  };
  double d_out = diff(y, yr);
  double d_gx = diff(xs.grad(), xr.grad());
  double d_w1 = diff(
      fc1->weight.grad(),
      ref1->weight.grad().narrow(0, h.local_offset(), h.local_size()));
  double d_w2 = diff(
      fc2->weight.grad(),
      ref2->weight.grad().narrow(1, h.local_offset(), h.local_size()));
  double d_b2 = diff(fc2->bias.grad(), ref2->bias.grad());
  // Every rank's worst difference, reduced to one number.
  auto worst = torch::tensor({d_out, d_gx, d_w1, d_w2, d_b2}, torch::kDouble);
  world.all_reduce(worst, torchtp::ReduceOp::max);
  auto w = worst.accessor<double, 1>();

  if (world.rank() == 0) {
    std::printf(
        "torchtp linear demo: %d ranks, MLP %lld -> %lld -> %lld, %lld "
        "tokens\n",
        world.size(), (long long)d_model, (long long)hidden, (long long)d_model,
        (long long)tokens);
    std::printf("  %s\n", c10::str(*fc1).c_str());
    std::printf("  %s\n", c10::str(*fc2).c_str());
    std::printf("largest difference from the unsharded block (all ranks):\n");
    std::printf("  output          %.3g\n", w[0]);
    std::printf("  input gradient  %.3g\n", w[1]);
    std::printf("  fc1 weight grad %.3g\n", w[2]);
    std::printf("  fc2 weight grad %.3g\n", w[3]);
    std::printf("  fc2 bias grad   %.3g  (full on every rank)\n", w[4]);
    std::printf(
        "step time (forward+backward): tensor-parallel %.2f ms, "
        "unsharded %.2f ms on each rank\n",
        tp_ms, ref_ms);
  }
  const bool ok =
      w[0] < 1e-3 && w[1] < 1e-3 && w[2] < 1e-3 && w[3] < 1e-3 && w[4] < 1e-3;
  if (world.rank() == 0) {
    std::printf("%s\n", ok ? "AGREE" : "DISAGREE");
  }
  return ok ? 0 : 1;
}

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "linear_demo", [&] { return run(argc, argv); });
}
