// Each region mapping, forward and backward, against what the unsharded
// computation gives. Rank r's tensors are drawn from seed r, so every rank
// can rebuild every other rank's tensors and the full result.

#include "test_util.h"

using torchtp::testing::all_close;
using torchtp::testing::world;

namespace {

torch::Tensor drawn(int seed, torch::IntArrayRef shape) {
  torch::manual_seed(1000 + seed);
  return torch::randn(shape, torch::kDouble);
}

std::vector<torch::Tensor> per_rank(
    int size, torch::IntArrayRef shape, int salt) {
  std::vector<torch::Tensor> out;
  for (int r = 0; r < size; ++r) {
    out.push_back(drawn(r + 97 * salt, shape));
  }
  return out;
}

torch::Tensor sum(const std::vector<torch::Tensor>& ts) {
  auto s = torch::zeros_like(ts[0]);
  for (const auto& t : ts) {
    s += t;
  }
  return s;
}

} // namespace

TEST(Mappings, CopyToIsIdentityForwardAndAllReduceBackward) {
  auto g = world();
  auto xs = per_rank(g.size(), {3, 4}, 0);
  auto gs = per_rank(g.size(), {3, 4}, 1);
  auto x = xs[g.rank()].clone().requires_grad_();
  auto y = torchtp::copy_to_tp_region(x, g);
  EXPECT_TRUE(all_close(y, xs[g.rank()]));
  y.backward(gs[g.rank()]);
  EXPECT_TRUE(all_close(x.grad(), sum(gs)));
}

TEST(Mappings, ReduceFromIsAllReduceForwardAndIdentityBackward) {
  auto g = world();
  auto xs = per_rank(g.size(), {2, 5}, 2);
  auto grad = drawn(3, {2, 5});
  auto x = xs[g.rank()].clone().requires_grad_();
  auto y = torchtp::reduce_from_tp_region(x, g);
  EXPECT_TRUE(all_close(y, sum(xs)));
  EXPECT_TRUE(all_close(x, xs[g.rank()])) << "the input was modified";
  y.backward(grad);
  EXPECT_TRUE(all_close(x.grad(), grad));
}

TEST(Mappings, ScatterToKeepsOwnChunkAndAllGathersTheGradient) {
  auto g = world();
  auto full = drawn(4, {2, 3, 2 * g.size()});
  auto gs = per_rank(g.size(), {2, 3, 2}, 5);
  auto x = full.clone().requires_grad_();
  auto y = torchtp::scatter_to_tp_region(x, g);
  EXPECT_TRUE(all_close(y, full.chunk(g.size(), -1)[g.rank()]));
  y.backward(gs[g.rank()]);
  EXPECT_TRUE(all_close(x.grad(), torch::cat(gs, -1)));
}

TEST(Mappings, GatherFromAllGathersAndKeepsOwnGradientChunk) {
  auto g = world();
  auto xs = per_rank(g.size(), {4, 3}, 6);
  auto grad = drawn(7, {4, 3 * g.size()});
  auto x = xs[g.rank()].clone().requires_grad_();
  auto y = torchtp::gather_from_tp_region(x, g);
  EXPECT_TRUE(all_close(y, torch::cat(xs, -1)));
  y.backward(grad);
  EXPECT_TRUE(all_close(x.grad(), grad.chunk(g.size(), -1)[g.rank()]));
}

TEST(Mappings, GatherFromSequenceAllGathersDim0AndReduceScattersBackward) {
  auto g = world();
  auto xs = per_rank(g.size(), {2, 3, 4}, 8);
  auto gs = per_rank(g.size(), {2 * g.size(), 3, 4}, 9);
  auto x = xs[g.rank()].clone().requires_grad_();
  auto y = torchtp::gather_from_sequence_region(x, g);
  EXPECT_TRUE(all_close(y, torch::cat(xs, 0)));
  y.backward(gs[g.rank()]);
  EXPECT_TRUE(all_close(x.grad(), sum(gs).chunk(g.size(), 0)[g.rank()]));
}

TEST(Mappings, ReduceScatterToSequenceAndAllGatherBackward) {
  auto g = world();
  auto xs = per_rank(g.size(), {2 * g.size(), 3}, 10);
  auto gs = per_rank(g.size(), {2, 3}, 11);
  auto x = xs[g.rank()].clone().requires_grad_();
  auto y = torchtp::reduce_scatter_to_sequence_region(x, g);
  EXPECT_TRUE(all_close(y, sum(xs).chunk(g.size(), 0)[g.rank()]));
  y.backward(gs[g.rank()]);
  EXPECT_TRUE(all_close(x.grad(), torch::cat(gs, 0)));
}

TEST(Mappings, ComposeInsideALargerGraph) {
  // copy_to then gather_from around a per-rank op: the gradient of the full
  // input is the gradient of the unsharded op.
  auto g = world();
  auto full = drawn(12, {3, 2 * g.size()});
  auto x = full.clone().requires_grad_();
  auto local =
      torchtp::scatter_to_tp_region(torchtp::copy_to_tp_region(x, g), g);
  auto y = torchtp::gather_from_tp_region(local.sin(), g);
  (y * y).sum().backward();
  auto xr = full.clone().requires_grad_();
  (xr.sin() * xr.sin()).sum().backward();
  // copy_to sums the per-rank gradients, each holding the full gradient.
  EXPECT_TRUE(all_close(x.grad(), xr.grad() * g.size()));
}

TEST(Mappings, ScatterOfALastDimThatDoesNotDivideRaises) {
  auto g = world();
  if (g.size() == 1) {
    EXPECT_NO_THROW(torchtp::scatter_to_tp_region(torch::ones({2, 3}), g));
    return;
  }
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] {
        torchtp::scatter_to_tp_region(torch::ones({2, g.size() + 1}), g);
      },
      {"not divisible", std::to_string(g.size() + 1), g.rank_label()}));
}
