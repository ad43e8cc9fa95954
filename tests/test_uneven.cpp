// Uneven splits (`uneven(true)`) end to end, at any world size (CTest runs
// 1 to 5): the linear layers (with fused segments and whole heads), the
// vocabulary (embedding, cross-entropy, sampling), the blocks, a GPT with
// GPT-2's vocabulary of 50257 and 12 heads, and a checkpoint saved at TP=3
// loaded at other degrees. Every result is compared with the unsharded
// computation; each rank's slice is taken by the rule as the documentation
// states it, written here independently of Partition.

#include "reference.h"

#include <filesystem>

using torchtp::testing::all_close;
using torchtp::testing::raises_with;
using torchtp::testing::shared_tmpdir;
using torchtp::testing::world;

namespace F = torch::nn::functional;

namespace {

// Rank r's [offset, size) of `units` units over `ws` ranks: the first
// `units % ws` ranks hold one more.
std::pair<int64_t, int64_t> uneven_range(int64_t units, int64_t ws, int64_t r) {
  const int64_t base = units / ws, extra = units % ws;
  return {r * base + std::min(r, extra), base + (r < extra ? 1 : 0)};
}

// Rank `r`'s shard of `full` along `dim`: its part of each of `segments`
// blocks, in units of `unit` indices.
torch::Tensor uneven_own(
    const torch::Tensor& full,
    int64_t dim,
    int64_t r,
    int64_t ws,
    int64_t unit = 1,
    int64_t segments = 1) {
  const int64_t d = dim < 0 ? full.dim() + dim : dim;
  const int64_t block = full.size(d) / segments;
  std::vector<torch::Tensor> pieces;
  for (int64_t s = 0; s < segments; ++s) {
    auto [offset, size] = uneven_range(block / unit, ws, r);
    pieces.push_back(full.narrow(d, s * block + offset * unit, size * unit));
  }
  return torch::cat(pieces, d);
}

torch::Tensor mine(
    const torch::Tensor& full,
    int64_t dim,
    int64_t unit = 1,
    int64_t segments = 1) {
  auto g = world();
  return uneven_own(full, dim, g.rank(), g.size(), unit, segments);
}

// The full tensor from every rank's uneven shard along `dim` (segments
// reordered into block order): gathered by padding each shard to the
// largest, with the world's plain even all-gather.
torch::Tensor gather_full(
    const torch::Tensor& shard,
    int64_t dim,
    int64_t full_size,
    int64_t unit = 1,
    int64_t segments = 1) {
  auto g = world();
  const int64_t ws = g.size();
  const int64_t block = full_size / segments;
  const int64_t largest = uneven_range(block / unit, ws, 0).second * unit;
  auto sizes = shard.sizes().vec();
  sizes[dim] = largest * segments;
  auto padded = torch::zeros(sizes, shard.options());
  padded.narrow(dim, 0, shard.size(dim)).copy_(shard.detach());
  auto all = g.all_gather(padded, dim);
  std::vector<torch::Tensor> pieces;
  for (int64_t s = 0; s < segments; ++s) {
    for (int64_t r = 0; r < ws; ++r) {
      const int64_t n = uneven_range(block / unit, ws, r).second * unit;
      pieces.push_back(all.narrow(dim, r * largest * segments + s * n, n));
    }
  }
  return torch::cat(pieces, dim);
}

} // namespace

// ---------------------------------------------------------------------------
// Linear layers

TEST(Uneven, ColumnWithSegmentsOfWholeHeadsMatchesUnsharded) {
  auto g = world();
  const int64_t ws = g.size();
  const int64_t in = 5, unit = 2;
  // Per segment: ws + 1 heads of width 2 (never divides for ws > 1); one
  // segment of 2 ws + 1 features, unit 1.
  for (auto [segments, per_segment, u] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 2 * ws + 1, 1}, {3, (ws + 1) * unit, unit}}) {
    for (bool gather : {false, true}) {
      SCOPED_TRACE(
          ::testing::Message() << "segments " << segments << " gather "
                               << gather);
      const int64_t out = segments * per_segment;
      torch::manual_seed(5);
      auto w = torch::randn({out, in}, torch::kDouble);
      auto b = torch::randn({out}, torch::kDouble);
      auto x = torch::randn({3, in}, torch::kDouble);
      auto grad_y = torch::randn({3, out}, torch::kDouble);
      torchtp::ColumnParallelLinear layer(
          torchtp::ColumnParallelLinearOptions(in, out)
              .segments(segments)
              .uneven(true)
              .split_unit(u)
              .gather_output(gather)
              .dtype(torch::kDouble));
      layer->load_full_weights(w, b);
      EXPECT_TRUE(torch::equal(layer->weight, mine(w, 0, u, segments)));
      auto xs = x.clone().requires_grad_();
      auto y = layer(xs);
      auto wr = w.clone().requires_grad_(), br = b.clone().requires_grad_();
      auto xr = x.clone().requires_grad_();
      auto yr = F::linear(xr, wr, br);
      yr.backward(grad_y);
      EXPECT_TRUE(all_close(y, gather ? yr : mine(yr, -1, u, segments)));
      y.backward(gather ? grad_y : mine(grad_y, -1, u, segments));
      EXPECT_TRUE(all_close(xs.grad(), xr.grad()));
      EXPECT_TRUE(
          all_close(layer->weight.grad(), mine(wr.grad(), 0, u, segments)));
      EXPECT_TRUE(
          all_close(layer->bias.grad(), mine(br.grad(), 0, u, segments)));
    }
  }
}

TEST(Uneven, RowSplitHereOrAlreadyMatchesUnsharded) {
  auto g = world();
  const int64_t ws = g.size();
  for (int64_t unit : {1, 3}) {
    for (bool parallel : {false, true}) {
      SCOPED_TRACE(
          ::testing::Message() << "unit " << unit << " parallel " << parallel);
      const int64_t in = (ws + 1) * unit, out = 4;
      torch::manual_seed(6);
      auto w = torch::randn({out, in}, torch::kDouble);
      auto b = torch::randn({out}, torch::kDouble);
      auto x = torch::randn({2, 3, in}, torch::kDouble);
      auto grad_y = torch::randn({2, 3, out}, torch::kDouble);
      torchtp::RowParallelLinear layer(
          torchtp::RowParallelLinearOptions(in, out)
              .input_is_parallel(parallel)
              .uneven(true)
              .split_unit(unit)
              .dtype(torch::kDouble));
      layer->load_full_weights(w, b);
      auto xs = (parallel ? mine(x, -1, unit) : x).clone().requires_grad_();
      auto y = layer(xs);
      auto wr = w.clone().requires_grad_(), br = b.clone().requires_grad_();
      auto xr = x.clone().requires_grad_();
      auto yr = F::linear(xr, wr, br);
      yr.backward(grad_y);
      EXPECT_TRUE(all_close(y, yr));
      y.backward(grad_y);
      EXPECT_TRUE(all_close(
          xs.grad(), parallel ? mine(xr.grad(), -1, unit) : xr.grad()));
      EXPECT_TRUE(all_close(layer->weight.grad(), mine(wr.grad(), 1, unit)));
      EXPECT_TRUE(all_close(layer->bias.grad(), br.grad()));
    }
  }
}

TEST(Uneven, SizesThatDoNotDivideStillRaiseByDefault) {
  auto g = world();
  const int64_t ws = g.size();
  if (ws == 1) {
    // Over one rank every size divides, and one head is enough.
    EXPECT_NO_THROW(torchtp::ColumnParallelLinear(
        torchtp::ColumnParallelLinearOptions(4, 3)));
    EXPECT_NO_THROW(torchtp::ParallelSelfAttention(
        torchtp::ParallelSelfAttentionOptions(2, 1).uneven(true)));
    return;
  }
  EXPECT_TRUE(raises_with(
      [&] {
        torchtp::ColumnParallelLinear(
            torchtp::ColumnParallelLinearOptions(4, 2 * ws + 1));
      },
      {"torchtp::ColumnParallelLinear: out_features",
       "is not divisible by the tensor-parallel size", "uneven(true)",
       g.rank_label()}));
  // Fewer heads than ranks cannot be split, even unevenly.
  EXPECT_TRUE(raises_with(
      [&] {
        torchtp::ParallelSelfAttention(
            torchtp::ParallelSelfAttentionOptions(2 * (ws - 1), ws - 1)
                .uneven(true));
      },
      {"num_heads (", "is smaller than the tensor-parallel size",
       g.rank_label()}));
}

// ---------------------------------------------------------------------------
// Vocabulary

TEST(Uneven, EmbeddingAndCrossEntropyOverAnOddVocabulary) {
  auto g = world();
  const int64_t ws = g.size();
  const int64_t vocab = 2 * ws + 1, dim = 3;
  torch::manual_seed(7);
  auto table = torch::randn({vocab, dim}, torch::kDouble);
  auto ids = torch::randint(0, vocab, {2, 5}, torch::kLong);
  torchtp::VocabParallelEmbedding emb(
      torchtp::VocabParallelEmbeddingOptions(vocab, dim)
          .uneven(true)
          .dtype(torch::kDouble));
  emb->load_full_weights(table);
  EXPECT_EQ(emb->weight.size(0), uneven_range(vocab, ws, g.rank()).second);
  auto out = emb(ids);
  auto table_ref = table.clone().requires_grad_();
  auto out_ref = F::embedding(ids, table_ref);
  EXPECT_TRUE(all_close(out, out_ref));
  auto grad = torch::randn({2, 5, dim}, torch::kDouble);
  out.backward(grad);
  out_ref.backward(grad);
  EXPECT_TRUE(all_close(emb->weight.grad(), mine(table_ref.grad(), 0)));

  // Cross-entropy with the partition given, and learnt from the shards.
  auto logits = torch::randn({4, vocab}, torch::kDouble);
  auto target = torch::randint(0, vocab, {4}, torch::kLong);
  auto lr = logits.clone().requires_grad_();
  auto loss_ref = F::cross_entropy(
      lr, target, F::CrossEntropyFuncOptions().label_smoothing(0.1));
  loss_ref.backward();
  for (bool given : {true, false}) {
    SCOPED_TRACE(given ? "partition given" : "partition learnt");
    auto shard = mine(logits, -1).clone().requires_grad_();
    auto options = torchtp::VocabParallelCrossEntropyOptions().label_smoothing(
        0.1);
    if (given) {
      options.vocab_partition(emb->vocab_partition());
    }
    auto loss = torchtp::vocab_parallel_cross_entropy(shard, target, options);
    EXPECT_TRUE(all_close(loss, loss_ref));
    loss.backward();
    EXPECT_TRUE(all_close(shard.grad(), mine(lr.grad(), -1)));
  }
}

TEST(Uneven, SamplingOverAnOddVocabularyEqualsTheFullLogits) {
  auto g = world();
  const int64_t vocab = 3 * g.size() + 2;
  torch::manual_seed(8);
  auto logits = torch::randn({3, vocab}, torch::kDouble);
  auto shard = mine(logits, -1);
  auto top = torchtp::vocab_parallel_topk(shard, 4);
  auto [values, ids] = logits.topk(4, -1);
  EXPECT_TRUE(all_close(top.values, values));
  EXPECT_TRUE(torch::equal(top.ids, ids));
  auto next = torchtp::sample_next_token(
      shard, at::detail::createCPUGenerator(1),
      torchtp::SamplingOptions().greedy(true));
  EXPECT_TRUE(torch::equal(next, logits.argmax(-1)));
}

// ---------------------------------------------------------------------------
// Blocks and the GPT: sharded against the same module on one rank
// (Group::self()), built after the same seed.

namespace {

// Every parameter gradient of `model` (sharded over the world) against
// `full`'s: split ones gathered in the uneven layout of their ShardSpec.
void expect_uneven_grads_match(
    torch::nn::Module& model, torch::nn::Module& full) {
  const auto specs = torchtp::shard_specs(model);
  auto full_params = full.named_parameters();
  for (const auto& item : model.named_parameters()) {
    SCOPED_TRACE(item.key());
    const auto& spec = specs.at(item.key());
    auto grad = item.value().grad();
    auto full_grad = full_params[item.key()].grad();
    ASSERT_TRUE(grad.defined() && full_grad.defined());
    if (spec.is_replicated()) {
      EXPECT_TRUE(all_close(grad, full_grad));
    } else {
      EXPECT_TRUE(all_close(
          gather_full(
              grad, spec.dim, full_grad.size(spec.dim), spec.unit,
              spec.segments),
          full_grad));
    }
  }
}

} // namespace

TEST(Uneven, TwelveHeadsOnAnyNumberOfRanks) {
  auto g = world();
  auto options = torchtp::TransformerLayerOptions(24, 12)
                     .ffn_hidden(2 * g.size() + 3)
                     .uneven(true)
                     .dtype(torch::kDouble);
  torch::manual_seed(9);
  torchtp::TransformerLayer layer(options);
  torch::manual_seed(9);
  torchtp::TransformerLayer full(options.group(torchtp::Group::self()));
  EXPECT_EQ(
      layer->attention->local_heads(), uneven_range(12, g.size(), g.rank()).second);
  torch::manual_seed(10);
  auto x = torch::randn({2, 5, 24}, torch::kDouble);
  auto grad = torch::randn({2, 5, 24}, torch::kDouble);
  auto xs = x.clone().requires_grad_(), xf = x.clone().requires_grad_();
  auto y = layer(xs);
  auto yf = full(xf);
  EXPECT_TRUE(all_close(y, yf));
  y.backward(grad);
  yf.backward(grad);
  EXPECT_TRUE(all_close(xs.grad(), xf.grad()));
  expect_uneven_grads_match(*layer, *full);
}

// GPT-2's vocabulary, unpadded, and its 12 heads: at every TP size the same
// logits, loss and gradients as on one rank.
TEST(Uneven, GPTWithVocabulary50257AndTwelveHeads) {
  auto g = world();
  auto options = torchtp::GPTOptions(50257, 6)
                     .d_model(24)
                     .num_heads(12)
                     .num_layers(1)
                     .vocab_pad_multiple(1)
                     .uneven(true)
                     .dtype(torch::kDouble);
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    auto sharded_options = options;
    sharded_options.tie_embeddings(tied);
    auto full_options = sharded_options;
    full_options.group(torchtp::Group::self());
    torch::manual_seed(11);
    torchtp::GPT gpt(sharded_options);
    torch::manual_seed(11);
    torchtp::GPT full(full_options);
    EXPECT_EQ(gpt->padded_vocab_size(), 50257);
    EXPECT_EQ(
        gpt->vocab_partition().local_size(),
        uneven_range(50257, g.size(), g.rank()).second);
    torch::manual_seed(12);
    auto ids = torch::randint(0, 50257, {2, 6}, torch::kLong);
    auto targets = torch::randint(0, 50257, {2, 6}, torch::kLong);
    EXPECT_TRUE(all_close(gpt->full_logits(ids), full->full_logits(ids)));
    auto loss = gpt->loss(ids, targets);
    auto full_loss = full->loss(ids, targets);
    EXPECT_TRUE(all_close(loss, full_loss));
    loss.backward();
    full_loss.backward();
    expect_uneven_grads_match(*gpt, *full);
  }
}

// A checkpoint saved at TP=3 (ranks 0-2) loads at the world's size (5
// under CTest's largest run) and at TP=2, equal to the model that was saved.
TEST(Uneven, CheckpointSavedAtThreeLoadsAtOtherDegrees) {
  auto g = world();
  // At 1 and 2 ranks: saved at the world's size.
  const int saved_tp = std::min(3, g.size());
  auto options = torchtp::GPTOptions(23, 6)
                     .d_model(12)
                     .num_heads(6)
                     .num_layers(1)
                     .vocab_pad_multiple(1)
                     .uneven(true)
                     .dtype(torch::kDouble);
  const auto dir = shared_tmpdir("uneven-ckpt");
  torch::manual_seed(13);
  auto ids = torch::randint(0, 23, {2, 6}, torch::kLong);
  auto targets = torch::randint(0, 23, {2, 6}, torch::kLong);
  // What was saved: one SGD step from seed 14, on one rank.
  torch::manual_seed(14);
  torchtp::GPT saved(options.group(torchtp::Group::self()));
  {
    torch::optim::SGD sgd(saved->parameters(), 0.5);
    saved->loss(ids, targets).backward();
    sgd.step();
  }
  auto expected = saved->full_logits(ids).detach();

  auto tp3 = g.split(g.rank() < saved_tp ? 0 : 1);
  if (g.rank() < saved_tp) {
    torch::manual_seed(14);
    torchtp::GPT model(options.group(tp3));
    torch::optim::SGD sgd(model->parameters(), 0.5);
    model->loss(ids, targets).backward();
    sgd.step();
    torchtp::save_checkpoint(dir + "/ckpt", *model);
  }
  g.barrier();
  auto tp2 = g.split(g.rank() < 2 ? 0 : 1);
  for (const auto& group : {g, tp2}) {
    if (group == tp2 && g.rank() >= 2) {
      continue; // the rest of the world, not a TP=2 load
    }
    SCOPED_TRACE(::testing::Message() << "loaded at TP=" << group.size());
    torch::manual_seed(99); // other weights, all overwritten by the load
    torchtp::GPT loaded(options.group(group));
    torchtp::load_checkpoint(dir + "/ckpt", *loaded);
    EXPECT_TRUE(all_close(loaded->full_logits(ids).detach(), expected));
  }
  g.barrier();
  if (g.rank() == 0) {
    std::filesystem::remove_all(dir);
  }
}
