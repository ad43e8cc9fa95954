// The model building blocks (embedding, cross-entropy, MLP, attention,
// transformer layer, dropout streams, GPT, data x tensor parallel) against
// the unsharded LibTorch computation written here from the same full
// weights. Every rank builds the full reference (same seeds) and compares
// its own slice of outputs and gradients.

#include "test_util.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

using torchtp::testing::all_close;
using torchtp::testing::raises_with;
using torchtp::testing::tolerance_for;
using torchtp::testing::world;

namespace F = torch::nn::functional;

namespace {

using Reduction = torchtp::VocabParallelCrossEntropyOptions::Reduction;

// A leaf copy of `t` for the reference graph, so its gradient is separate
// from the one of the tensor under test.
torch::Tensor leaf(const torch::Tensor& t) {
  return t.detach().clone().requires_grad_();
}

// This rank's equal chunk of `full` along `dim` (what Partition gives for
// even splits).
torch::Tensor own(
    const torch::Tensor& full, int64_t dim, const torchtp::Group& g = world()) {
  return full.chunk(g.size(), dim)[g.rank()];
}

// Rows of a full fused [Wq; Wk; Wv] tensor ([3 d, ...]) that rank `rank` of
// `ws` holds: its part of each of the Q, K and V blocks, in block order.
torch::Tensor pick_qkv_rows(
    const torch::Tensor& full, int64_t rank, int64_t ws) {
  auto sizes = full.sizes().vec();
  const int64_t block = sizes[0] / 3;
  std::vector<int64_t> split = {3, ws, block / ws};
  split.insert(split.end(), sizes.begin() + 1, sizes.end());
  auto out = sizes;
  out[0] = sizes[0] / ws;
  return full.reshape(split).select(1, rank).reshape(out);
}

// The inverse of pick_qkv_rows over the group: the all-gather is rank-major
// [r0: q k v, r1: q k v, ..], the full tensor is block-major.
torch::Tensor gather_qkv(const torchtp::Group& g, const torch::Tensor& shard) {
  auto gathered = g.all_gather(shard.detach(), 0);
  auto sizes = shard.sizes().vec();
  std::vector<int64_t> split = {g.size(), 3, sizes[0] / 3};
  split.insert(split.end(), sizes.begin() + 1, sizes.end());
  auto full = sizes;
  full[0] = sizes[0] * g.size();
  return gathered.reshape(split).transpose(0, 1).reshape(full);
}

// Unsharded causal multi-head self-attention from the stacked
// [Wq; Wk; Wv] weight, one head at a time: deliberately not the library's
// fused reshapes.
torch::Tensor attention_ref(
    const torch::Tensor& x,
    const torch::Tensor& w_qkv,
    const torch::Tensor& b_qkv,
    const torch::Tensor& w_o,
    const torch::Tensor& b_o,
    int64_t heads,
    bool causal) {
  const int64_t s = x.size(1), d = x.size(2), hd = d / heads;
  auto project = [&](int64_t block) {
    return F::linear(
        x, w_qkv.narrow(0, block * d, d), b_qkv.narrow(0, block * d, d));
  };
  auto q_all = project(0), k_all = project(1), v_all = project(2);
  auto future = torch::ones({s, s}, torch::kBool).triu(1);
  std::vector<torch::Tensor> context;
  for (int64_t h = 0; h < heads; ++h) {
    auto q = q_all.narrow(-1, h * hd, hd);
    auto k = k_all.narrow(-1, h * hd, hd);
    auto v = v_all.narrow(-1, h * hd, hd);
    auto scores = torch::bmm(q, k.transpose(1, 2)) / std::sqrt(double(hd));
    if (causal) {
      scores =
          scores.masked_fill(future, -std::numeric_limits<double>::infinity());
    }
    context.push_back(torch::bmm(torch::softmax(scores, -1), v));
  }
  return F::linear(torch::cat(context, -1), w_o, b_o);
}

torch::Tensor mlp_ref(
    const torch::Tensor& x,
    const torch::Tensor& w1,
    const torch::Tensor& b1,
    const torch::Tensor& w2,
    const torch::Tensor& b2) {
  return F::linear(torch::gelu(F::linear(x, w1, b1)), w2, b2);
}

torch::Tensor layer_norm_ref(
    const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  return F::layer_norm(
      x, F::LayerNormFuncOptions({x.size(-1)}).weight(w).bias(b).eps(1e-5));
}

bool is_qkv(const std::string& name) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) ==
               0;
  };
  return ends_with("qkv.weight") || ends_with("qkv.bias");
}

// Every parameter gradient of the sharded `model` against the unsharded
// `full` model's: replicated parameters directly, split ones after
// gathering the shards over `tp` along the dim whose size differs (the
// fused qkv reordered into block order). Every rank calls the same gathers
// in the same order: the parameter lists are the same on every rank.
void expect_grads_match(
    torch::nn::Module& model,
    torch::nn::Module& full,
    const torchtp::Group& tp) {
  auto params = model.named_parameters();
  auto full_params = full.named_parameters();
  EXPECT_FALSE(params.is_empty());
  EXPECT_EQ(params.size(), full_params.size());
  for (const auto& item : params) {
    SCOPED_TRACE(item.key());
    const auto* ref = full_params.find(item.key());
    EXPECT_NE(ref, nullptr) << "no parameter " << item.key();
    if (ref == nullptr || !item.value().grad().defined()) {
      EXPECT_TRUE(item.value().grad().defined()) << "no gradient";
      continue;
    }
    const auto grad = item.value().grad();
    const auto full_grad = ref->grad();
    if (grad.sizes() == full_grad.sizes()) {
      EXPECT_TRUE(all_close(grad, full_grad));
      continue;
    }
    if (is_qkv(item.key())) {
      EXPECT_TRUE(all_close(gather_qkv(tp, grad), full_grad));
      continue;
    }
    int64_t dim = 0;
    while (dim < grad.dim() && grad.size(dim) == full_grad.size(dim)) {
      ++dim;
    }
    EXPECT_TRUE(all_close(tp.all_gather(grad, dim), full_grad));
  }
}

// The GPT of the invariance tests: sizes fixed across world sizes 1-4 (12
// heads, padded vocabulary 24), so its full weights are the same at each.
torchtp::GPTOptions small_gpt() {
  return torchtp::GPTOptions(/*vocab_size=*/13, /*max_seq_len=*/8)
      .d_model(48)
      .num_heads(12)
      .num_layers(2)
      .vocab_pad_multiple(12)
      .dtype(torch::kDouble);
}

// One cross-entropy case: loss and logits gradient of the sharded call
// against F::cross_entropy on the full (real) logits.
struct CrossEntropyCase {
  torch::Tensor logits; // full [4, 6, V], double
  torch::Tensor target; // [4, 6]
  Reduction reduction = Reduction::mean;
  double smoothing = 0.0;
  int64_t vocab_size = 0; // 0: every column is real
  torch::Dtype dtype = torch::kDouble;
};

void check_cross_entropy(const CrossEntropyCase& c) {
  const int64_t full_v = c.logits.size(-1);
  const int64_t real_v = c.vocab_size > 0 ? c.vocab_size : full_v;
  SCOPED_TRACE(
      ::testing::Message() << "reduction=" << int(c.reduction) << " smoothing="
                           << c.smoothing << " vocab_size=" << real_v << "/"
                           << full_v << " dtype=" << c10::toString(c.dtype));
  // Rounded to the tested dtype first, so the reference sees the same
  // values.
  auto logits = c.logits.to(c.dtype);
  auto shard = own(logits, -1).clone().requires_grad_();
  auto loss = torchtp::vocab_parallel_cross_entropy(
      shard, c.target,
      torchtp::VocabParallelCrossEntropyOptions()
          .reduction(c.reduction)
          .label_smoothing(c.smoothing)
          .vocab_size(c.vocab_size));

  auto full = leaf(logits.to(torch::kDouble));
  auto opts = F::CrossEntropyFuncOptions().ignore_index(-100).label_smoothing(
      c.smoothing);
  switch (c.reduction) {
    case Reduction::mean:
      opts.reduction(torch::kMean);
      break;
    case Reduction::sum:
      opts.reduction(torch::kSum);
      break;
    case Reduction::none:
      opts.reduction(torch::kNone);
      break;
  }
  auto expected = F::cross_entropy(
      full.narrow(-1, 0, real_v).reshape({-1, real_v}), c.target.reshape({-1}),
      opts);
  torch::Tensor upstream;
  if (c.reduction == Reduction::none) {
    expected = expected.reshape(c.target.sizes());
    torch::manual_seed(99);
    upstream = torch::randn(c.target.sizes(), torch::kDouble);
  } else {
    upstream = torch::ones({}, torch::kDouble);
  }
  expected.backward(upstream);

  const auto tol = tolerance_for(c.dtype);
  EXPECT_TRUE(all_close(loss, expected.detach(), tol)) << "loss";
  loss.backward(upstream.to(loss.scalar_type()));
  // The padded columns have no gradient in the reference: zeros.
  auto full_grad = full.grad();
  EXPECT_TRUE(torch::all(full_grad.narrow(-1, real_v, full_v - real_v) == 0)
                  .item<bool>());
  ASSERT_TRUE(shard.grad().defined());
  EXPECT_EQ(shard.grad().scalar_type(), c.dtype);
  EXPECT_TRUE(all_close(shard.grad(), own(full_grad, -1), tol))
      << "logits gradient";
}

// Logits [4, 6, V] and targets in [0, real_v) with a few -100s, the same on
// every rank.
CrossEntropyCase cross_entropy_problem(
    int64_t full_v, int64_t real_v, uint64_t seed) {
  torch::manual_seed(seed);
  CrossEntropyCase c;
  c.logits = torch::randn({4, 6, full_v}, torch::kDouble) * 3;
  c.target = torch::randint(0, real_v, {4, 6}, torch::kLong);
  c.target.view({-1}).index_put_(
      {torch::tensor({1, 7, 8, 20}, torch::kLong)}, -100);
  c.vocab_size = real_v == full_v ? 0 : real_v;
  return c;
}

// The mask of one dropout draw on this rank, gathered: row r is rank r's.
torch::Tensor gathered_mask(torch::Generator& gen) {
  auto kept = torchtp::dropout(
                  torch::ones({256}, torch::kDouble), 0.5,
                  /*training=*/true, gen) != 0;
  return world().all_gather(kept.to(torch::kDouble).unsqueeze(0), 0);
}

} // namespace

// ---------------------------------------------------------------------------
// VocabParallelEmbedding

TEST(VocabParallelEmbedding, ForwardAndBackwardMatchFullTable) {
  auto g = world();
  const int64_t v = 4 * g.size(), dim = 5;
  torch::manual_seed(3);
  auto table = torch::randn({v, dim}, torch::kDouble);
  // 7 is prime to every V here, so the 15 ids reach every rank's range,
  // with repeats for V < 15 (their gradients must accumulate).
  auto ids = (torch::arange(15, torch::kLong) * 7 % v).reshape({3, 5});
  for (int64_t r = 0; r < g.size(); ++r) {
    ASSERT_TRUE(((ids >= 4 * r) & (ids < 4 * r + 4)).any().item<bool>());
  }
  auto upstream = torch::randn({3, 5, dim}, torch::kDouble);

  torchtp::VocabParallelEmbedding emb(
      torchtp::VocabParallelEmbeddingOptions(v, dim).dtype(torch::kDouble));
  emb->load_full_weights(table);
  EXPECT_EQ(emb->vocab_start_index(), 4 * g.rank());
  EXPECT_EQ(emb->vocab_end_index(), 4 * g.rank() + 4);
  auto out = emb(ids);
  out.backward(upstream);

  auto full = leaf(table);
  auto expected = F::embedding(ids, full);
  expected.backward(upstream);
  EXPECT_TRUE(all_close(out, expected.detach()));
  EXPECT_TRUE(all_close(emb->weight.grad(), own(full.grad(), 0)));

  // Int ids are accepted too.
  EXPECT_TRUE(all_close(emb(ids.to(torch::kInt)), expected.detach()));
}

TEST(VocabParallelEmbedding, DefaultInitIsTorchNnEmbeddingRows) {
  auto g = world();
  const int64_t v = 4 * g.size(), dim = 6;
  torch::manual_seed(11);
  torch::nn::Embedding full(v, dim);
  torch::manual_seed(11);
  torchtp::VocabParallelEmbedding emb(v, dim);
  EXPECT_TRUE(torch::equal(emb->weight, own(full->weight, 0)));
}

TEST(VocabParallelEmbedding, OutOfRangeIdRaisesWithRankTag) {
  auto g = world();
  const int64_t v = 4 * g.size();
  torchtp::VocabParallelEmbedding emb(v, 3);
  // Both ends: one id past the table, one negative.
  auto past_end = torch::tensor({int64_t{0}, v}, torch::kLong);
  auto negative = torch::tensor({-1, 0}, torch::kLong);
  EXPECT_TRUE(raises_with(
      [&] { emb(past_end); },
      {"VocabParallelEmbedding", std::to_string(v), g.rank_label()}));
  EXPECT_TRUE(
      raises_with([&] { emb(negative); }, {"VocabParallelEmbedding", g.rank_label()}));
}

// ---------------------------------------------------------------------------
// vocab_parallel_cross_entropy

TEST(VocabParallelCrossEntropy, EveryReductionMatchesUnsharded) {
  const int64_t v = 4 * world().size();
  for (auto red : {Reduction::mean, Reduction::sum, Reduction::none}) {
    auto c = cross_entropy_problem(v, v, 40);
    c.reduction = red;
    check_cross_entropy(c);
  }
}

TEST(VocabParallelCrossEntropy, LabelSmoothingMatchesUnsharded) {
  // torch 1.13: with ignore_index, mean divides by the non-ignored count.
  const int64_t v = 4 * world().size();
  for (double s : {0.1, 0.3}) {
    for (auto red : {Reduction::mean, Reduction::sum, Reduction::none}) {
      auto c = cross_entropy_problem(v, v, 41);
      c.reduction = red;
      c.smoothing = s;
      check_cross_entropy(c);
    }
  }
}

TEST(VocabParallelCrossEntropy, PaddedVocabularyIsLeftOut) {
  // 8 columns a rank, the last three of the last rank padding: the loss is
  // F::cross_entropy on the real columns, the padding gets no gradient.
  const int64_t v = 8 * world().size();
  for (double s : {0.0, 0.1}) {
    for (auto red : {Reduction::mean, Reduction::none}) {
      auto c = cross_entropy_problem(v, v - 3, 42);
      c.reduction = red;
      c.smoothing = s;
      check_cross_entropy(c);
    }
  }
}

TEST(VocabParallelCrossEntropy, RankHoldingOnlyPaddingIsLeftOut) {
  // The last 4 ids are padding: at more than one rank they are the last
  // rank's whole shard (its local maximum is -inf); alone, half the table.
  auto g = world();
  const int64_t v = 4 * std::max(g.size(), 2);
  for (double s : {0.0, 0.3}) {
    auto c = cross_entropy_problem(v, v - 4, 43);
    c.smoothing = s;
    check_cross_entropy(c);
  }
}

TEST(VocabParallelCrossEntropy, BFloat16LogitsWithinLooseTolerance) {
  const int64_t v = 4 * world().size();
  for (double s : {0.0, 0.1}) {
    for (auto red : {Reduction::mean, Reduction::none}) {
      auto c = cross_entropy_problem(v, v, 44);
      c.reduction = red;
      c.smoothing = s;
      c.dtype = torch::kBFloat16;
      check_cross_entropy(c);
    }
  }
}

TEST(VocabParallelCrossEntropy, TargetOutsideVocabularyRaises) {
  auto g = world();
  const int64_t v = 4 * g.size();
  auto logits = torch::randn({2, 4});
  auto target = torch::tensor({int64_t{0}, v}, torch::kLong);
  EXPECT_TRUE(raises_with(
      [&] { torchtp::vocab_parallel_cross_entropy(logits, target); },
      {"vocab_parallel_cross_entropy", std::to_string(v), g.rank_label()}));
  // With padding, a padded id is no target either.
  auto padded = torch::tensor({int64_t{0}, v - 2}, torch::kLong);
  EXPECT_TRUE(raises_with(
      [&] {
        torchtp::vocab_parallel_cross_entropy(
            logits, padded,
            torchtp::VocabParallelCrossEntropyOptions().vocab_size(v - 3));
      },
      {"vocab_parallel_cross_entropy", g.rank_label()}));
}

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

// ---------------------------------------------------------------------------
// RngTracker and dropout

TEST(RngTracker, ReplicatedSameOnEveryRankShardedDiffersReseedReplays) {
  auto g = world();
  torchtp::RngTracker rng(123, g);
  auto replicated = gathered_mask(rng.replicated());
  auto sharded = gathered_mask(rng.sharded());
  for (int64_t r = 1; r < g.size(); ++r) {
    EXPECT_TRUE(torch::equal(replicated[r], replicated[0]))
        << "replicated mask of rank " << r << " differs from rank 0's";
    for (int64_t q = 0; q < r; ++q) {
      // 256 fair draws: equal by chance with probability 2^-256.
      EXPECT_FALSE(torch::equal(sharded[r], sharded[q]))
          << "sharded masks of ranks " << q << " and " << r << " are equal";
    }
  }
  EXPECT_FALSE(torch::equal(sharded[0], replicated[0]))
      << "the sharded stream must not be the replicated one";

  // The global generator does not disturb the streams.
  torch::manual_seed(1);
  torch::rand({100});
  rng.reseed(123);
  EXPECT_TRUE(torch::equal(gathered_mask(rng.replicated()), replicated));
  EXPECT_TRUE(torch::equal(gathered_mask(rng.sharded()), sharded));
  // A second draw continues the stream: a new mask.
  EXPECT_FALSE(torch::equal(gathered_mask(rng.replicated()), replicated));
}

TEST(Dropout, EvalModeAndZeroProbabilityAreTheIdentity) {
  torchtp::RngTracker rng(5, world());
  torch::manual_seed(6);
  auto x = torch::randn({4, 7}, torch::kDouble);
  EXPECT_TRUE(torch::equal(
      torchtp::dropout(x, 0.5, /*training=*/false, rng.replicated()), x));
  EXPECT_TRUE(torch::equal(
      torchtp::dropout(x, 0.0, /*training=*/true, rng.replicated()), x));
}

TEST(Dropout, KeptElementsAreScaledByOneOverOneMinusP) {
  torchtp::RngTracker rng(8, world());
  torch::manual_seed(7);
  const double p = 0.3;
  for (auto dt : {torch::kDouble, torch::kFloat}) {
    SCOPED_TRACE(c10::toString(dt));
    // Nonzero inputs, so a zero output means dropped.
    auto x = (torch::rand({4000}, torch::kDouble) + 0.5).to(dt);
    auto y = torchtp::dropout(x, p, /*training=*/true, rng.sharded());
    EXPECT_EQ(y.scalar_type(), dt);
    auto kept = y != 0;
    const double frac = kept.to(torch::kDouble).mean().item<double>();
    // Binomial(4000, 0.7): standard deviation 0.0072.
    EXPECT_NEAR(frac, 1 - p, 0.04);
    // Exactly 1 / (1 - p) in the input's dtype, as torch::dropout scales:
    // a scale rounded to float32 is off by 2.4e-8 relative for p = 0.3.
    EXPECT_TRUE(
        all_close(y.masked_select(kept), x.masked_select(kept) / (1 - p)));
  }
}

// ---------------------------------------------------------------------------
// GPT

TEST(GPT, ShardedEqualsUnshardedLogitsLossAndGradients) {
  auto g = world();
  torch::manual_seed(42);
  torchtp::GPT gpt(small_gpt());
  torch::manual_seed(42);
  torchtp::GPT full(small_gpt().group(torchtp::Group::self()));
  EXPECT_EQ(gpt->padded_vocab_size(), 24);

  torch::manual_seed(43);
  auto ids = torch::randint(0, 13, {2, 8}, torch::kLong);
  auto targets = torch::randint(0, 13, {2, 8}, torch::kLong);
  targets.index_put_({0, 3}, -100);

  auto logits = gpt->full_logits(ids);
  auto full_logits = full->full_logits(ids);
  // The padded ids never appear.
  EXPECT_EQ(logits.sizes(), torch::IntArrayRef({2, 8, 13}));
  EXPECT_EQ(
      gpt->forward(ids).sizes(), torch::IntArrayRef({2, 8, 24 / g.size()}));
  EXPECT_TRUE(all_close(logits, full_logits));

  auto loss = gpt->loss(ids, targets);
  auto full_loss = full->loss(ids, targets);
  EXPECT_TRUE(all_close(loss, full_loss));
  // The loss is plain cross-entropy over the 13 real ids.
  EXPECT_TRUE(all_close(
      full_loss, F::cross_entropy(
                     full_logits.reshape({-1, 13}), targets.reshape({-1}),
                     F::CrossEntropyFuncOptions().ignore_index(-100))));
  loss.backward();
  full_loss.backward();
  expect_grads_match(*gpt, *full, g);
}

TEST(GPT, LabelSmoothedLossEqualsUnsharded) {
  torch::manual_seed(42);
  torchtp::GPT gpt(small_gpt());
  torch::manual_seed(42);
  torchtp::GPT full(small_gpt().group(torchtp::Group::self()));
  torch::manual_seed(44);
  auto ids = torch::randint(0, 13, {2, 8}, torch::kLong);
  auto targets = torch::randint(0, 13, {2, 8}, torch::kLong);
  auto loss = gpt->loss(ids, targets, 0.1);
  auto full_loss = full->loss(ids, targets, 0.1);
  EXPECT_TRUE(all_close(loss, full_loss));
  // Smoothing over the 13 real ids only, as torch does on real logits.
  EXPECT_TRUE(all_close(
      full_loss,
      F::cross_entropy(
          full->full_logits(ids).reshape({-1, 13}), targets.reshape({-1}),
          F::CrossEntropyFuncOptions().label_smoothing(0.1))));
  loss.backward();
  full_loss.backward();
  expect_grads_match(*gpt, *full, world());
}

TEST(GPT, DropoutStepIsTheSameOnEveryRankAndReplaysAfterReseed) {
  auto g = world();
  torch::manual_seed(45);
  torchtp::GPT gpt(small_gpt().hidden_dropout(0.2).attention_dropout(0.2));
  torch::manual_seed(46);
  auto ids = torch::randint(0, 13, {2, 8}, torch::kLong);
  auto targets = torch::randint(0, 13, {2, 8}, torch::kLong);
  gpt->rng().reseed(500);
  auto first = gpt->loss(ids, targets).detach();
  auto second = gpt->loss(ids, targets).detach();
  gpt->rng().reseed(500);
  auto replay = gpt->loss(ids, targets).detach();
  EXPECT_TRUE(torch::equal(replay, first)) << "reseed must replay the step";
  EXPECT_FALSE(torch::equal(second, first)) << "the streams must advance";
  // The loss every rank computes is the same number.
  auto all = g.all_gather(first.reshape({1}), 0);
  EXPECT_TRUE(torch::equal(all, first.reshape({1}).expand({g.size()})));
  gpt->eval();
  auto clean = gpt->loss(ids, targets).detach();
  EXPECT_FALSE(torch::equal(clean, first)) << "training mode dropped nothing";
}

// ---------------------------------------------------------------------------
// Data x tensor parallel

TEST(DataTensorParallel, AveragedGradientsEqualUnshardedFullBatch) {
  // 2 x 2 at four ranks; elsewhere all tensor parallel (one replica), so
  // the test still checks the sharded gradients.
  auto g = world();
  const int tp = g.size() == 4 ? 2 : g.size();
  auto pg = torchtp::make_parallel_groups(g, tp);
  const int dp = g.size() / tp;
  ASSERT_EQ(pg.tensor.size(), tp);
  ASSERT_EQ(pg.data.size(), dp);
  EXPECT_EQ(pg.tensor.rank(), g.rank() % tp);
  EXPECT_EQ(pg.data.rank(), g.rank() / tp);

  torch::manual_seed(7);
  torchtp::GPT gpt(small_gpt().group(pg.tensor));
  torch::manual_seed(7);
  torchtp::GPT full(small_gpt().group(torchtp::Group::self()));

  torch::manual_seed(8);
  auto ids = torch::randint(0, 13, {4, 8}, torch::kLong);
  auto targets = torch::randint(0, 13, {4, 8}, torch::kLong);
  // Every replica sees the same number of tokens (none ignored), so the
  // mean of the replica means is the mean over the whole batch.
  const int64_t rows = 4 / dp, first = pg.data.rank() * rows;
  auto loss =
      gpt->loss(ids.narrow(0, first, rows), targets.narrow(0, first, rows));
  loss.backward();
  torchtp::average_gradients(*gpt, pg.data);

  auto full_loss = full->loss(ids, targets);
  full_loss.backward();

  auto mean_loss = loss.detach().clone();
  pg.data.all_reduce(mean_loss);
  mean_loss /= dp;
  EXPECT_TRUE(all_close(mean_loss, full_loss.detach()));
  expect_grads_match(*gpt, *full, pg.tensor);
}

TEST(ClipGradNorm, IsTheNormOfTheFullGradientAndScalesLikeTorch) {
  auto g = world();
  torch::manual_seed(42);
  torchtp::GPT gpt(small_gpt());
  torch::manual_seed(42);
  torchtp::GPT full(small_gpt().group(torchtp::Group::self()));
  torch::manual_seed(44);
  auto ids = torch::randint(0, 13, {2, 8}, torch::kLong);
  auto targets = torch::randint(0, 13, {2, 8}, torch::kLong);
  gpt->loss(ids, targets).backward();
  full->loss(ids, targets).backward();
  // A max norm far below the gradient's: every gradient is scaled.
  const double norm = torchtp::clip_grad_norm(*gpt, 0.05);
  const double full_norm =
      torch::nn::utils::clip_grad_norm_(full->parameters(), 0.05);
  EXPECT_GT(full_norm, 0.05);
  EXPECT_NEAR(norm, full_norm, 1e-10 * full_norm);
  expect_grads_match(*gpt, *full, g);
  // Below the max norm nothing changes.
  auto before = gpt->lm_head->weight.grad().clone();
  EXPECT_NEAR(torchtp::clip_grad_norm(*gpt, 1e6), 0.05, 1e-6);
  EXPECT_TRUE(torch::equal(gpt->lm_head->weight.grad(), before));
}
