// ParallelMLP, ParallelSelfAttention and TransformerLayer against the
// unsharded computations of reference.h from the same full weights, forward
// and backward; every rank compares its own slice of the gradients.

#include "reference.h"

#include <cmath>
#include <memory>
#include <string>

using torchtp::testing::all_close;
using torchtp::testing::attention_ref;
using torchtp::testing::gather_qkv;
using torchtp::testing::layer_norm_ref;
using torchtp::testing::leaf;
using torchtp::testing::mlp_ref;
using torchtp::testing::own;
using torchtp::testing::pick_qkv_rows;
using torchtp::testing::raises_with;
using torchtp::testing::world;

// ---------------------------------------------------------------------------
// ParallelMLP

TEST(ParallelMLP, ForwardAndBackwardMatchUnsharded) {
  auto g = world();
  const int64_t d = 6, hidden = 4 * g.size();
  torch::manual_seed(21);
  torchtp::ParallelMLP mlp(
      torchtp::ParallelMLPOptions(d, hidden).dtype(torch::kDouble));
  // Default init: two torch::nn::Linear draws, fc1 then fc2.
  torch::manual_seed(21);
  auto [w1_init, b1_init] =
      torchtp::detail::linear_init(d, hidden, true, torch::kDouble);
  auto [w2_init, b2_init] =
      torchtp::detail::linear_init(hidden, d, true, torch::kDouble);

  auto w1 = leaf(g.all_gather(mlp->fc1->weight.detach(), 0));
  auto b1 = leaf(g.all_gather(mlp->fc1->bias.detach(), 0));
  auto w2 = leaf(g.all_gather(mlp->fc2->weight.detach(), 1));
  auto b2 = leaf(mlp->fc2->bias);
  EXPECT_TRUE(torch::equal(w1, w1_init));
  EXPECT_TRUE(torch::equal(b1, b1_init));
  EXPECT_TRUE(torch::equal(w2, w2_init));
  EXPECT_TRUE(torch::equal(b2, b2_init));

  torch::manual_seed(22);
  auto x0 = torch::randn({2, 3, d}, torch::kDouble);
  auto upstream = torch::randn({2, 3, d}, torch::kDouble);
  auto xr = leaf(x0);
  auto expected = mlp_ref(xr, w1, b1, w2, b2);
  expected.backward(upstream);

  auto x = leaf(x0);
  auto y = mlp(x);
  y.backward(upstream);
  EXPECT_TRUE(all_close(y, expected.detach()));
  EXPECT_TRUE(all_close(x.grad(), xr.grad())) << "input gradient";
  EXPECT_TRUE(all_close(mlp->fc1->weight.grad(), own(w1.grad(), 0)));
  EXPECT_TRUE(all_close(mlp->fc1->bias.grad(), own(b1.grad(), 0)));
  EXPECT_TRUE(all_close(mlp->fc2->weight.grad(), own(w2.grad(), 1)));
  EXPECT_TRUE(all_close(mlp->fc2->bias.grad(), b2.grad()));
}

// ---------------------------------------------------------------------------
// ParallelSelfAttention

TEST(ParallelSelfAttention, ForwardAndBackwardMatchUnsharded) {
  auto g = world();
  const int64_t ws = g.size(), heads = 2 * ws, d = 4 * heads;
  torch::manual_seed(5);
  auto w_qkv0 = torch::randn({3 * d, d}, torch::kDouble) / std::sqrt(d);
  auto b_qkv0 = torch::randn({3 * d}, torch::kDouble) / 10;
  auto w_o0 = torch::randn({d, d}, torch::kDouble) / std::sqrt(d);
  auto b_o0 = torch::randn({d}, torch::kDouble) / 10;
  auto x0 = torch::randn({2, 5, d}, torch::kDouble);
  auto upstream = torch::randn({2, 5, d}, torch::kDouble);

  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "not causal");
    torchtp::ParallelSelfAttention attn(
        torchtp::ParallelSelfAttentionOptions(d, heads).causal(causal).dtype(
            torch::kDouble));
    EXPECT_EQ(attn->local_heads(), 2);
    attn->qkv->load_full_weights(w_qkv0, b_qkv0);
    attn->proj->load_full_weights(w_o0, b_o0);
    auto x = leaf(x0);
    auto y = attn(x);
    y.backward(upstream);

    auto w_qkv = leaf(w_qkv0), b_qkv = leaf(b_qkv0);
    auto w_o = leaf(w_o0), b_o = leaf(b_o0);
    auto xr = leaf(x0);
    auto expected = attention_ref(xr, w_qkv, b_qkv, w_o, b_o, heads, causal);
    expected.backward(upstream);

    EXPECT_TRUE(all_close(y, expected.detach()));
    EXPECT_TRUE(all_close(x.grad(), xr.grad())) << "input gradient";
    EXPECT_TRUE(all_close(
        attn->qkv->weight.grad(), pick_qkv_rows(w_qkv.grad(), g.rank(), ws)))
        << "qkv weight gradient";
    EXPECT_TRUE(all_close(
        attn->qkv->bias.grad(), pick_qkv_rows(b_qkv.grad(), g.rank(), ws)))
        << "qkv bias gradient";
    EXPECT_TRUE(all_close(attn->proj->weight.grad(), own(w_o.grad(), 1)));
    EXPECT_TRUE(all_close(attn->proj->bias.grad(), b_o.grad()));
  }
}

TEST(ParallelSelfAttention, DefaultInitIsTheFullFusedLinearPicked) {
  auto g = world();
  const int64_t ws = g.size(), heads = 2 * ws, d = 4 * heads;
  torch::manual_seed(5);
  torchtp::ParallelSelfAttention attn(
      torchtp::ParallelSelfAttentionOptions(d, heads).dtype(torch::kDouble));
  torch::manual_seed(5);
  auto [w, b] = torchtp::detail::linear_init(d, 3 * d, true, torch::kDouble);
  auto [w_o, b_o] = torchtp::detail::linear_init(d, d, true, torch::kDouble);
  EXPECT_TRUE(torch::equal(attn->qkv->weight, pick_qkv_rows(w, g.rank(), ws)));
  EXPECT_TRUE(torch::equal(attn->qkv->bias, pick_qkv_rows(b, g.rank(), ws)));
  EXPECT_TRUE(torch::equal(attn->proj->weight, own(w_o, 1)));
  EXPECT_TRUE(torch::equal(attn->proj->bias, b_o));
  // Gathering the shards gives the same full weight at every world size.
  EXPECT_TRUE(torch::equal(gather_qkv(g, attn->qkv->weight), w));
  EXPECT_TRUE(torch::equal(gather_qkv(g, attn->qkv->bias), b));
}

TEST(ParallelSelfAttention, HeadsThatDoNotDivideTheWorldRaise) {
  auto g = world();
  const int64_t heads = g.size() + 1, d = 4 * heads;
  if (g.size() == 1) {
    EXPECT_NO_THROW(torchtp::ParallelSelfAttention(
        torchtp::ParallelSelfAttentionOptions(d, heads)));
    return;
  }
  EXPECT_TRUE(raises_with(
      [&] {
        torchtp::ParallelSelfAttention(
            torchtp::ParallelSelfAttentionOptions(d, heads));
      },
      {"num_heads", std::to_string(heads), g.rank_label()}));
}

// ---------------------------------------------------------------------------
// TransformerLayer

TEST(TransformerLayer, ForwardAndBackwardMatchUnsharded) {
  auto g = world();
  const int64_t ws = g.size(), heads = 2 * ws, d = 4 * heads;
  torch::manual_seed(9);
  torchtp::TransformerLayer layer(
      torchtp::TransformerLayerOptions(d, heads).dtype(torch::kDouble));
  {
    // Non-trivial LayerNorm parameters (the same on every rank), so their
    // gradients and effect are really tested.
    torch::NoGradGuard no_grad;
    for (auto* ln : {&layer->ln1, &layer->ln2}) {
      (*ln)->weight.copy_(1 + torch::randn({d}, torch::kDouble) / 4);
      (*ln)->bias.copy_(torch::randn({d}, torch::kDouble) / 4);
    }
  }
  // The full weights, gathered from the shards.
  auto& attn = layer->attention;
  auto& mlp = layer->mlp;
  auto w_qkv = leaf(gather_qkv(g, attn->qkv->weight));
  auto b_qkv = leaf(gather_qkv(g, attn->qkv->bias));
  auto w_o = leaf(g.all_gather(attn->proj->weight.detach(), 1));
  auto b_o = leaf(attn->proj->bias);
  auto w1 = leaf(g.all_gather(mlp->fc1->weight.detach(), 0));
  auto b1 = leaf(g.all_gather(mlp->fc1->bias.detach(), 0));
  auto w2 = leaf(g.all_gather(mlp->fc2->weight.detach(), 1));
  auto b2 = leaf(mlp->fc2->bias);
  EXPECT_EQ(w1.size(0), 4 * d) << "default ffn_hidden is 4 d_model";
  auto ln1_w = leaf(layer->ln1->weight), ln1_b = leaf(layer->ln1->bias);
  auto ln2_w = leaf(layer->ln2->weight), ln2_b = leaf(layer->ln2->bias);

  auto x0 = torch::randn({2, 5, d}, torch::kDouble);
  auto upstream = torch::randn({2, 5, d}, torch::kDouble);
  auto xr = leaf(x0);
  auto h = xr + attention_ref(
                    layer_norm_ref(xr, ln1_w, ln1_b), w_qkv, b_qkv, w_o, b_o,
                    heads, /*causal=*/true);
  auto expected = h + mlp_ref(layer_norm_ref(h, ln2_w, ln2_b), w1, b1, w2, b2);
  expected.backward(upstream);

  auto x = leaf(x0);
  auto y = layer(x);
  y.backward(upstream);
  EXPECT_TRUE(all_close(y, expected.detach()));
  EXPECT_TRUE(all_close(x.grad(), xr.grad())) << "input gradient";
  // Replicated LayerNorms: every rank holds the full gradient.
  EXPECT_TRUE(all_close(layer->ln1->weight.grad(), ln1_w.grad()));
  EXPECT_TRUE(all_close(layer->ln1->bias.grad(), ln1_b.grad()));
  EXPECT_TRUE(all_close(layer->ln2->weight.grad(), ln2_w.grad()));
  EXPECT_TRUE(all_close(layer->ln2->bias.grad(), ln2_b.grad()));
  EXPECT_TRUE(all_close(
      attn->qkv->weight.grad(), pick_qkv_rows(w_qkv.grad(), g.rank(), ws)));
  EXPECT_TRUE(all_close(
      attn->qkv->bias.grad(), pick_qkv_rows(b_qkv.grad(), g.rank(), ws)));
  EXPECT_TRUE(all_close(attn->proj->weight.grad(), own(w_o.grad(), 1)));
  EXPECT_TRUE(all_close(attn->proj->bias.grad(), b_o.grad()));
  EXPECT_TRUE(all_close(mlp->fc1->weight.grad(), own(w1.grad(), 0)));
  EXPECT_TRUE(all_close(mlp->fc1->bias.grad(), own(b1.grad(), 0)));
  EXPECT_TRUE(all_close(mlp->fc2->weight.grad(), own(w2.grad(), 1)));
  EXPECT_TRUE(all_close(mlp->fc2->bias.grad(), b2.grad()));
}

TEST(TransformerLayer, DropoutKeepsRanksIdenticalAndEvalIsDeterministic) {
  // Hidden dropout draws from the replicated stream and attention dropout
  // from the sharded one: in both cases the output, which every rank holds
  // whole, must stay the same on every rank.
  auto g = world();
  const int64_t heads = 2 * g.size(), d = 4 * heads;
  torch::manual_seed(10);
  torchtp::TransformerLayer layer(
      torchtp::TransformerLayerOptions(d, heads)
          .hidden_dropout(0.3)
          .attention_dropout(0.3)
          .rng(std::make_shared<torchtp::RngTracker>(77, g))
          .dtype(torch::kDouble));
  auto x = torch::randn({2, 5, d}, torch::kDouble);
  auto y = layer(x);
  auto all = g.all_gather(y.detach().unsqueeze(0), 0);
  for (int64_t r = 0; r < g.size(); ++r) {
    EXPECT_TRUE(torch::equal(all[r], all[0])) << "rank " << r << " differs";
  }
  layer->eval();
  auto a = layer(x), b = layer(x);
  EXPECT_TRUE(torch::equal(a, b)) << "eval mode must not drop";
  EXPECT_FALSE(torch::equal(a, y)) << "training mode dropped nothing";
}
