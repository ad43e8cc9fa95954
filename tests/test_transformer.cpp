// ParallelMLP, ParallelSelfAttention and TransformerLayer against the
// unsharded computations of reference.h from the same full weights, forward
// and backward; every rank compares its own slice of the gradients.

#include "reference.h"

#include "detail/activation_kernels.h"
#include "detail/weight_kernels.h"

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
using torchtp::testing::same_on_every_rank;
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

// The MLP's inference activation (detail::activation_rows) in every
// instruction set this CPU has, against float64 from the same (widened)
// inputs. float32: y = x sigmoid(a) through a vector exponential and a
// division, each within a few units of 2^-24; a's own error scales the
// result by about |a| of them where sigmoid is small (then y is tiny), so
// |y - exact| <= (8 + 4 |a|) 2^-24 |exact|. bfloat16: each of the (one
// or, gated, two) roundings to bfloat16 within one unit in the last place
// of the exact one's, at most 2^-7 of it.
TEST(MLPActivation, EveryInstructionSetMatchesFloat64) {
  namespace d = torchtp::detail;
  // Rows of 1000: three 256-value chunks and a tail, not a multiple of the
  // vector lanes; values out to where exp overflows and underflows.
  const int64_t rows = 3, n = 1000;
  torch::manual_seed(5);
  auto x = torch::randn({rows, 2 * n}) * 4;
  x.index_put_({0, torch::indexing::Slice(0, 8)},
               torch::tensor({-200.f, -90.f, -30.f, -1e-30f, 0.f, 1e-30f,
                              30.f, 200.f}));
  for (auto isa : {d::Isa::generic, d::Isa::avx2, d::Isa::avx512}) {
    if (!d::cpu_supports(isa)) {
      continue;
    }
    for (auto act : {d::ActivationKernel::gelu_tanh, d::ActivationKernel::silu}) {
      for (bool gated : {false, true}) {
        for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
          const auto in = x.to(dtype);
          auto y = torch::empty({rows, n}, in.options());
          if (dtype == torch::kFloat) {
            const float* p = in.data_ptr<float>();
            d::activation_rows(
                isa, act, p, gated ? p + n : nullptr, 2 * n,
                y.data_ptr<float>(), rows, n);
          } else {
            const auto* p = reinterpret_cast<const uint16_t*>(in.data_ptr());
            d::activation_rows(
                isa, act, p, gated ? p + n : nullptr, 2 * n,
                reinterpret_cast<uint16_t*>(y.data_ptr()), rows, n);
          }
          const auto wide = in.to(torch::kDouble);
          const auto v = wide.narrow(1, 0, n);
          const auto a = act == d::ActivationKernel::silu
              ? v
              : v * (2 * std::sqrt(2 / M_PI)) * (1 + 0.044715 * v * v);
          auto exact = v * torch::sigmoid(a);
          torch::Tensor bound;
          if (dtype == torch::kFloat) {
            bound = (8 + 4 * a.abs()) * std::ldexp(1.0, -24) * exact.abs();
            if (gated) {
              exact = exact * wide.narrow(1, n, n);
              bound = bound * wide.narrow(1, n, n).abs() +
                  std::ldexp(1.0, -24) * exact.abs();
            }
          } else {
            exact = exact.to(torch::kBFloat16).to(torch::kDouble);
            if (gated) {
              exact = exact * wide.narrow(1, n, n);
            }
            bound = std::ldexp(1.0, -7) * (gated ? 2 : 1) * exact.abs();
          }
          const auto err = (y.to(torch::kDouble) - exact).abs();
          const auto worst = (err - bound - 1e-30).max().item<double>();
          EXPECT_LE(worst, 0)
              << d::isa_name(isa) << " "
              << (act == d::ActivationKernel::silu ? "silu" : "gelu_tanh")
              << (gated ? " gated " : " ") << dtype << ": |diff| "
              << err.max().item<double>();
          // A row's result does not depend on the others.
          auto alone = torch::empty({1, n}, in.options());
          if (dtype == torch::kFloat) {
            const float* p = in.data_ptr<float>() + 2 * (2 * n);
            d::activation_rows(
                isa, act, p, gated ? p + n : nullptr, 2 * n,
                alone.data_ptr<float>(), 1, n);
          } else {
            const auto* p =
                reinterpret_cast<const uint16_t*>(in.data_ptr()) + 2 * (2 * n);
            d::activation_rows(
                isa, act, p, gated ? p + n : nullptr, 2 * n,
                reinterpret_cast<uint16_t*>(alone.data_ptr()), 1, n);
          }
          EXPECT_TRUE(torch::equal(alone[0], y[2])) << d::isa_name(isa);
        }
      }
    }
  }
}

// ParallelMLP's inference (no gradients: the kernel above) and its
// training forward (LibTorch's activation) agree, for GELU's tanh form and
// the gated SiLU, sharded at this world size, in float32 and bfloat16.
TEST(ParallelMLP, InferenceActivationMatchesTrainingForward) {
  auto g = world();
  for (bool gated : {false, true}) {
    for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
      torch::manual_seed(23);
      torchtp::ParallelMLP mlp(
          torchtp::ParallelMLPOptions(16, 8 * g.size())
              .activation(
                  gated ? torchtp::Activation::silu
                        : torchtp::Activation::gelu_tanh)
              .gated(gated)
              .dtype(dtype));
      const auto x = torch::randn({3, 2, 16}).to(dtype);
      torch::Tensor inference;
      {
        torch::NoGradGuard no_grad;
        inference = mlp(x);
      }
      const auto training = mlp(x).detach();
      // float32: the two activations within a few 2^-24 of each other,
      // summed over 8 * ws products of O(1); bfloat16: a rounding apart.
      const double tol = dtype == torch::kFloat ? 1e-5 : 2e-2;
      EXPECT_TRUE(torch::allclose(
          inference.to(torch::kDouble), training.to(torch::kDouble), tol, tol))
          << (gated ? "gated silu " : "gelu_tanh ") << dtype << ": max diff "
          << (inference.to(torch::kDouble) - training.to(torch::kDouble))
                 .abs()
                 .max()
                 .item<double>();
    }
  }
}

// A bfloat16 layer norm at inference goes through float32 (LibTorch's
// bfloat16 kernel takes six times as long, and rounds along the way): the
// float32 arithmetic rounded once, so within half a bfloat16 unit (2^-8 of
// the value) of the float64 layer norm of the same values, and a few
// float32 units more.
TEST(Norm, Bfloat16InferenceRoundsTheFloat64LayerNormOnce) {
  torch::manual_seed(24);
  torchtp::Norm norm(torchtp::NormOptions(768).dtype(torch::kBFloat16));
  {
    torch::NoGradGuard no_grad;
    norm->weight.copy_(torch::randn({768}));
    norm->bias.copy_(torch::randn({768}));
  }
  const auto x = (torch::randn({8, 1, 768}) * 3 + 1).to(torch::kBFloat16);
  torch::Tensor inference;
  {
    torch::NoGradGuard no_grad;
    inference = norm(x);
  }
  EXPECT_EQ(inference.scalar_type(), torch::kBFloat16);
  const auto wide = [](const torch::Tensor& t) {
    return t.detach().to(torch::kDouble);
  };
  const auto exact =
      torch::layer_norm(wide(x), {768}, wide(norm->weight), wide(norm->bias));
  const auto err = (wide(inference) - exact).abs();
  EXPECT_TRUE((err <= (std::ldexp(1.0, -8) + 1e-5) * exact.abs() + 1e-6)
                  .all()
                  .item<bool>())
      << "max diff " << err.max().item<double>();
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

// ---------------------------------------------------------------------------
// TransformerLayer: sequence parallelism and recomputation

namespace {

// A layer's full weights, gathered from its shards, as leaves of an
// unsharded reference graph.
struct FullLayerWeights {
  torch::Tensor w_qkv, b_qkv, w_o, b_o, w1, b1, w2, b2;
  torch::Tensor ln1_w, ln1_b, ln2_w, ln2_b;
};

// Non-trivial LayerNorm parameters (the same on every rank), so their
// gradients and effect are really tested.
void perturb_layer_norms(torchtp::TransformerLayer& layer, int64_t d) {
  torch::NoGradGuard no_grad;
  for (auto* ln : {&layer->ln1, &layer->ln2}) {
    (*ln)->weight.copy_(1 + torch::randn({d}, torch::kDouble) / 4);
    (*ln)->bias.copy_(torch::randn({d}, torch::kDouble) / 4);
  }
}

FullLayerWeights gather_layer_weights(
    torchtp::TransformerLayer& layer, const torchtp::Group& g) {
  auto& attn = layer->attention;
  auto& mlp = layer->mlp;
  return {
      leaf(gather_qkv(g, attn->qkv->weight)),
      leaf(gather_qkv(g, attn->qkv->bias)),
      leaf(g.all_gather(attn->proj->weight.detach(), 1)),
      leaf(attn->proj->bias),
      leaf(g.all_gather(mlp->fc1->weight.detach(), 0)),
      leaf(g.all_gather(mlp->fc1->bias.detach(), 0)),
      leaf(g.all_gather(mlp->fc2->weight.detach(), 1)),
      leaf(mlp->fc2->bias),
      leaf(layer->ln1->weight),
      leaf(layer->ln1->bias),
      leaf(layer->ln2->weight),
      leaf(layer->ln2->bias)};
}

// The unsharded pre-norm block in plain LibTorch; `m1`, `m2` (when
// defined) are the hidden dropout's scaled keep-masks of the two branches.
torch::Tensor unsharded_layer(
    const torch::Tensor& x,
    const FullLayerWeights& w,
    int64_t heads,
    const torch::Tensor& m1 = {},
    const torch::Tensor& m2 = {}) {
  auto a = attention_ref(
      layer_norm_ref(x, w.ln1_w, w.ln1_b), w.w_qkv, w.b_qkv, w.w_o, w.b_o,
      heads, /*causal=*/true);
  auto h = x + (m1.defined() ? a * m1 : a);
  auto m = mlp_ref(layer_norm_ref(h, w.ln2_w, w.ln2_b), w.w1, w.b1, w.w2, w.b2);
  return h + (m2.defined() ? m * m2 : m);
}

// Every parameter gradient of `layer` against the reference's: this rank's
// slice of split ones, the full gradient of replicated ones, which must
// also be the same bits on every rank.
void expect_layer_grads_match(
    torchtp::TransformerLayer& layer,
    const FullLayerWeights& w,
    const torchtp::Group& g) {
  const int64_t ws = g.size();
  auto& attn = layer->attention;
  auto& mlp = layer->mlp;
  const std::vector<std::pair<torch::Tensor, torch::Tensor>> replicated = {
      {layer->ln1->weight, w.ln1_w}, {layer->ln1->bias, w.ln1_b},
      {layer->ln2->weight, w.ln2_w}, {layer->ln2->bias, w.ln2_b},
      {attn->proj->bias, w.b_o},     {mlp->fc2->bias, w.b2}};
  for (size_t i = 0; i < replicated.size(); ++i) {
    SCOPED_TRACE("replicated parameter " + std::to_string(i));
    EXPECT_TRUE(
        all_close(replicated[i].first.grad(), replicated[i].second.grad()));
    EXPECT_TRUE(same_on_every_rank(replicated[i].first.grad(), g));
  }
  EXPECT_TRUE(all_close(
      attn->qkv->weight.grad(), pick_qkv_rows(w.w_qkv.grad(), g.rank(), ws)));
  EXPECT_TRUE(all_close(
      attn->qkv->bias.grad(), pick_qkv_rows(w.b_qkv.grad(), g.rank(), ws)));
  EXPECT_TRUE(all_close(attn->proj->weight.grad(), own(w.w_o.grad(), 1)));
  EXPECT_TRUE(all_close(mlp->fc1->weight.grad(), own(w.w1.grad(), 0)));
  EXPECT_TRUE(all_close(mlp->fc1->bias.grad(), own(w.b1.grad(), 0)));
  EXPECT_TRUE(all_close(mlp->fc2->weight.grad(), own(w.w2.grad(), 1)));
}

struct MemoryMode {
  bool sequence_parallel;
  bool recompute;
  std::string name() const {
    return std::string(sequence_parallel ? "sequence parallel" : "") +
           (sequence_parallel && recompute ? " + " : "") +
           (recompute ? "recompute" : "");
  }
};

const std::vector<MemoryMode> kMemoryModes = {
    {true, false}, {false, true}, {true, true}};

bool has_recompute_node(const torch::Tensor& y) {
  return y.grad_fn() &&
         y.grad_fn()->name().find("Recompute") != std::string::npos;
}

} // namespace

// Sequence lengths the sequence-parallel tests split: one that divides by
// the world size, and 7 with uneven(true), which at 2, 3 and 4 ranks gives
// parts such as 2, 2, 2, 1 (the first 7 % ws ranks hold one more).
struct SequenceCase {
  int64_t seq;
  bool uneven;
};

std::vector<SequenceCase> sequence_cases(int64_t ws) {
  return {{2 * ws, false}, {7, true}};
}

TEST(TransformerLayer, SequenceParallelAndRecomputeMatchUnsharded) {
  auto g = world();
  const int64_t ws = g.size(), heads = 2 * ws, d = 4 * heads;
  for (const auto& [s, uneven] : sequence_cases(ws))
    for (const auto& mode : kMemoryModes) {
      SCOPED_TRACE(
          mode.name() + ", sequence " + std::to_string(s) +
          (uneven ? " uneven" : ""));
      torch::manual_seed(12);
      const auto x0 = torch::randn({2, s, d}, torch::kDouble);
      const auto upstream = torch::randn({2, s, d}, torch::kDouble);
      torch::manual_seed(9);
      torchtp::TransformerLayer layer(
          torchtp::TransformerLayerOptions(d, heads)
              .sequence_parallel(mode.sequence_parallel)
              .recompute(mode.recompute)
              .uneven(uneven)
              .dtype(torch::kDouble));
      perturb_layer_norms(layer, d);
      const auto w = gather_layer_weights(layer, g);
      auto xr = leaf(x0);
      auto expected = unsharded_layer(xr, w, heads);
      expected.backward(upstream);

      // Sequence parallel: this rank's positions in, its positions out.
      const auto part = layer->sequence_partition(s);
      auto mine = [&](const torch::Tensor& full) {
        return mode.sequence_parallel ? part.narrow(full, 1) : full;
      };
      auto x = leaf(mine(x0));
      auto y = layer(x, s);
      EXPECT_EQ(has_recompute_node(y), mode.recompute);
      y.backward(mine(upstream));
      EXPECT_TRUE(all_close(y, mine(expected.detach())));
      EXPECT_TRUE(all_close(x.grad(), mine(xr.grad()))) << "input gradient";
      expect_layer_grads_match(layer, w, g);
    }
}

// Hidden dropout in a sequence-parallel layer: each rank masks its own
// positions with its own (sharded) stream; the reference applies those
// masks, gathered, to the unsharded block.
TEST(TransformerLayer, SequenceParallelDropoutUsesEachRanksStream) {
  auto g = world();
  const int64_t ws = g.size(), heads = 2 * ws, d = 4 * heads;
  const double p = 0.3;
  for (const auto& [s, uneven] : sequence_cases(ws))
    for (bool recompute : {false, true}) {
      SCOPED_TRACE(
          std::string(recompute ? "recompute" : "no recompute") +
          ", sequence " + std::to_string(s));
      torch::manual_seed(13);
      const auto x0 = torch::randn({2, s, d}, torch::kDouble);
      const auto upstream = torch::randn({2, s, d}, torch::kDouble);
      torch::manual_seed(9);
      torchtp::TransformerLayer layer(
          torchtp::TransformerLayerOptions(d, heads)
              .hidden_dropout(p)
              .sequence_parallel(true)
              .recompute(recompute)
              .uneven(uneven)
              .rng(std::make_shared<torchtp::RngTracker>(77, g))
              .dtype(torch::kDouble));
      perturb_layer_norms(layer, d);
      const auto w = gather_layer_weights(layer, g);
      const auto part = layer->sequence_partition(s);

      // The two masks the layer draws, in order, from this rank's stream.
      torchtp::RngTracker streams(77, g);
      auto ones = torch::ones({2, part.local_size(), d}, torch::kDouble);
      auto m1 = torchtp::dropout(ones, p, true, streams.sharded());
      auto m2 = torchtp::dropout(ones, p, true, streams.sharded());
      auto xr = leaf(x0);
      auto expected = unsharded_layer(
          xr, w, heads, g.all_gather(m1, 1, part), g.all_gather(m2, 1, part));
      expected.backward(upstream);

      auto x = leaf(part.narrow(x0, 1));
      auto y = layer(x, s);
      y.backward(part.narrow(upstream, 1));
      EXPECT_TRUE(all_close(y, part.narrow(expected.detach(), 1)));
      EXPECT_TRUE(all_close(x.grad(), part.narrow(xr.grad(), 1)));
      expect_layer_grads_match(layer, w, g);
    }
}

// With dropout on both branches and in attention: two steps with
// recomputation give the outputs and (accumulated) gradients of two steps
// without it, at the same world size: the recomputed forward drew the same
// masks, and the streams continue as if it had not run.
TEST(TransformerLayer, RecomputeReplaysTheDropoutMasks) {
  auto g = world();
  const int64_t ws = g.size(), heads = 2 * ws, d = 4 * heads, s = 7;
  torch::manual_seed(14);
  const auto x0 = torch::randn({2, s, d}, torch::kDouble);
  const auto upstream = torch::randn({2, s, d}, torch::kDouble);
  for (bool sp : {false, true}) {
    SCOPED_TRACE(sp ? "sequence parallel" : "not sequence parallel");
    auto make = [&](bool recompute) {
      torch::manual_seed(9);
      return torchtp::TransformerLayer(
          torchtp::TransformerLayerOptions(d, heads)
              .hidden_dropout(0.3)
              .attention_dropout(0.3)
              .sequence_parallel(sp)
              .recompute(recompute)
              .uneven(true)
              .rng(std::make_shared<torchtp::RngTracker>(78, g))
              .dtype(torch::kDouble));
    };
    auto plain = make(false), recomputed = make(true);
    const auto part = plain->sequence_partition(s);
    auto mine = [&](const torch::Tensor& full) {
      return sp ? part.narrow(full, 1) : full;
    };
    torch::Tensor ya;
    for (int step = 0; step < 2; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      auto xa = leaf(mine(x0)), xb = leaf(mine(x0));
      ya = plain(xa, s);
      auto yb = recomputed(xb, s);
      EXPECT_TRUE(has_recompute_node(yb));
      ya.backward(mine(upstream));
      yb.backward(mine(upstream));
      EXPECT_TRUE(all_close(yb, ya.detach()));
      EXPECT_TRUE(all_close(xb.grad(), xa.grad()));
      const auto pa = plain->named_parameters();
      for (const auto& item : recomputed->named_parameters()) {
        SCOPED_TRACE(item.key());
        EXPECT_TRUE(all_close(item.value().grad(), pa[item.key()].grad()));
      }
    }
    plain->eval();
    EXPECT_FALSE(torch::equal(plain(mine(x0), s), ya.detach()))
        << "nothing was dropped";
  }
}

TEST(TransformerLayer, SequenceLengthThatDoesNotDivideRaises) {
  auto g = world();
  const int64_t ws = g.size(), heads = 2 * ws, d = 4 * heads;
  torchtp::TransformerLayer layer(
      torchtp::TransformerLayerOptions(d, heads).sequence_parallel(true).dtype(
          torch::kDouble));
  if (ws == 1) {
    EXPECT_EQ(layer->sequence_partition(7).local_size(), 7);
    return;
  }
  const std::vector<std::string> needles = {
      "torchtp::TransformerLayer", "sequence", "(7)",
      "tensor-parallel size (" + std::to_string(ws) + ")", g.rank_label()};
  auto check = [&](auto f) {
    EXPECT_TRUE(raises_with(
        f, {needles[0], needles[1], needles[2], needles[3], needles[4]}));
  };
  check([&] { layer->sequence_partition(7); });
  // Raised before any collective, so every rank raises and none hangs.
  check([&] { layer(torch::zeros({2, 2, d}, torch::kDouble), 7); });
  // Uneven parts: a rank cannot tell the whole length from its part.
  torchtp::TransformerLayer uneven(torchtp::TransformerLayerOptions(d, heads)
                                       .sequence_parallel(true)
                                       .uneven(true)
                                       .dtype(torch::kDouble));
  EXPECT_EQ(
      uneven->sequence_partition(7).local_size(),
      g.rank() < 7 % ws ? 7 / ws + 1 : 7 / ws);
  EXPECT_TRUE(raises_with(
      [&] {
        uneven(torch::zeros({2, 2, d}, torch::kDouble));
      },
      {"pass the full sequence length", g.rank_label()}));
  // A part of the wrong length names both.
  EXPECT_TRUE(raises_with(
      [&] {
        layer(torch::zeros({2, 3, d}, torch::kDouble), 2 * ws);
      },
      {"expected this rank's 2 of the " + std::to_string(2 * ws) + " positions",
       "[2, 3, " + std::to_string(d) + "]", g.rank_label()}));
}
