// GPT sharded over the world against the same GPT on one rank
// (Group::self()): logits, loss and every parameter gradient, with label
// smoothing, and dropout that stays identical on every rank.

#include "reference.h"

using torchtp::testing::all_close;
using torchtp::testing::expect_grads_match;
using torchtp::testing::small_gpt;
using torchtp::testing::world;

namespace F = torch::nn::functional;

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

// GPT-2's options: the output layer tied to the token embedding (whose
// gradient then sums both uses), tanh GELU, another LayerNorm epsilon.
TEST(GPT, TiedEmbeddingsAndTanhGeluEqualUnsharded) {
  auto g = world();
  auto options = small_gpt()
                     .tie_embeddings(true)
                     .activation(torchtp::Activation::gelu_tanh)
                     .layer_norm_eps(1e-3);
  torch::manual_seed(42);
  torchtp::GPT gpt(options);
  torch::manual_seed(42);
  torchtp::GPT full(options.group(torchtp::Group::self()));
  EXPECT_FALSE(gpt->lm_head);
  EXPECT_EQ(
      gpt->named_parameters().size() + 1,
      torchtp::GPT(small_gpt())->named_parameters().size());

  torch::manual_seed(43);
  auto ids = torch::randint(0, 13, {2, 8}, torch::kLong);
  auto targets = torch::randint(0, 13, {2, 8}, torch::kLong);
  auto full_logits = full->full_logits(ids);
  EXPECT_TRUE(all_close(gpt->full_logits(ids), full_logits));
  // Tied: the logits are the final hidden states times the embedding.
  {
    torch::NoGradGuard no_grad;
    auto h = full->token_embedding(ids) +
             full->position_embedding(torch::arange(8, torch::kLong));
    for (const auto& layer : *full->layers) {
      h = layer->as<torchtp::TransformerLayerImpl>()->forward(h);
    }
    auto expected = torch::matmul(
        F::layer_norm(
            h, F::LayerNormFuncOptions({h.size(-1)})
                   .weight(full->final_norm->weight)
                   .bias(full->final_norm->bias)
                   .eps(1e-3)),
        full->token_embedding->weight.narrow(0, 0, 13).t());
    EXPECT_TRUE(all_close(full_logits, expected));
  }
  auto loss = gpt->loss(ids, targets);
  auto full_loss = full->loss(ids, targets);
  EXPECT_TRUE(all_close(loss, full_loss));
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

// The whole model built after a seed: every shard bit-equal to its slice of
// the full draws an unsharded GPT makes, in construction order (token
// table, position table, per layer qkv, proj, fc1, fc2, then the output
// layer), and the generator left where those draws leave it.
TEST(GPT, InitDrawsEachShardOfTheFullDrawsAndAdvancesTheGenerator) {
  using torchtp::testing::full_embedding_draw;
  using torchtp::testing::full_linear_draw;
  using torchtp::testing::InitBlockBytes;
  using torchtp::testing::next_numbers;
  using torchtp::testing::own;
  using torchtp::testing::pick_qkv_rows;
  auto g = world();
  const int64_t ws = g.size(), r = g.rank();
  const int64_t d = 48, ffn = 4 * d, vocab_padded = 24, seq = 8;
  for (const auto dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16}) {
    for (const int64_t bytes : {int64_t{100}, int64_t{16} << 20}) {
      SCOPED_TRACE(
          std::string(c10::toString(dtype)) + ", block " +
          std::to_string(bytes) + " bytes");
      InitBlockBytes blocks(bytes);
      torch::manual_seed(81);
      std::map<std::string, torch::Tensor> expected;
      expected["token_embedding.weight"] =
          own(full_embedding_draw(vocab_padded, d, dtype), 0);
      // Replicated, drawn by torch in float32 and converted.
      torch::nn::Embedding position(seq, d);
      expected["position_embedding.weight"] =
          position->weight.detach().to(dtype);
      const auto ones = torch::ones({d}, dtype),
                 zeros = torch::zeros({d}, dtype);
      for (int i = 0; i < 2; ++i) {
        const std::string p = "layers." + std::to_string(i) + ".";
        const auto qkv = full_linear_draw(d, 3 * d, true, dtype);
        const auto proj = full_linear_draw(d, d, true, dtype);
        const auto fc1 = full_linear_draw(d, ffn, true, dtype);
        const auto fc2 = full_linear_draw(ffn, d, true, dtype);
        expected[p + "attention.qkv.weight"] = pick_qkv_rows(qkv.w, r, ws);
        expected[p + "attention.qkv.bias"] = pick_qkv_rows(qkv.b, r, ws);
        expected[p + "attention.proj.weight"] = own(proj.w, 1);
        expected[p + "attention.proj.bias"] = proj.b;
        expected[p + "mlp.fc1.weight"] = own(fc1.w, 0);
        expected[p + "mlp.fc1.bias"] = own(fc1.b, 0);
        expected[p + "mlp.fc2.weight"] = own(fc2.w, 1);
        expected[p + "mlp.fc2.bias"] = fc2.b;
        for (const char* ln : {"ln1.", "ln2."}) {
          expected[p + ln + "weight"] = ones;
          expected[p + ln + "bias"] = zeros;
        }
      }
      expected["final_norm.weight"] = ones;
      expected["final_norm.bias"] = zeros;
      expected["lm_head.weight"] =
          own(full_linear_draw(d, vocab_padded, false, dtype).w, 0);
      const auto next = next_numbers();

      torch::manual_seed(81);
      torchtp::GPT gpt(small_gpt().dtype(dtype));
      const auto after = next_numbers();
      const auto params = gpt->named_parameters();
      EXPECT_EQ(params.size(), expected.size());
      for (const auto& item : params) {
        SCOPED_TRACE(item.key());
        const auto it = expected.find(item.key());
        ASSERT_NE(it, expected.end()) << "unexpected parameter";
        EXPECT_TRUE(torch::equal(item.value(), it->second));
      }
      EXPECT_TRUE(torch::equal(after, next));
    }
  }
}

// ---------------------------------------------------------------------------
// Sequence parallelism and recomputation

namespace {

// The replicated parameters' gradients (LayerNorms, position embedding,
// row-parallel biases) hold the same bits on every rank.
void expect_replicated_grads_identical(
    torchtp::GPTImpl& gpt, const torchtp::Group& g) {
  const auto specs = torchtp::shard_specs(gpt);
  for (const auto& item : gpt.named_parameters()) {
    if (specs.at(item.key()).is_replicated()) {
      SCOPED_TRACE(item.key());
      EXPECT_TRUE(torchtp::testing::same_on_every_rank(item.value().grad(), g));
    }
  }
}

} // namespace

// Whether small_gpt's sizes (12 heads, padded vocabulary 24) and a sequence
// of 12 need uneven splits at this world size (at 5 ranks).
namespace {
bool twelve_needs_uneven() {
  return 12 % world().size() != 0;
}
} // namespace

// Sequences of 12 (divides by 1 to 4) and, with uneven(true), of 7 (parts
// such as 2, 2, 2, 1).
TEST(GPT, SequenceParallelAndRecomputeEqualUnsharded) {
  auto g = world();
  const bool odd = twelve_needs_uneven();
  for (const auto& [seq, uneven, tied] :
       std::vector<std::tuple<int64_t, bool, bool>>{
           {12, odd, false}, {12, odd, true}, {7, true, false}}) {
    SCOPED_TRACE(
        "sequence " + std::to_string(seq) + (uneven ? " uneven" : "") +
        (tied ? ", tied embeddings" : ", separate output layer"));
    torch::manual_seed(47);
    auto ids = torch::randint(0, 13, {2, seq}, torch::kLong);
    auto targets = torch::randint(0, 13, {2, seq}, torch::kLong);
    targets.index_put_({1, 5}, -100);
    const auto options =
        small_gpt().max_seq_len(12).tie_embeddings(tied).uneven(uneven);
    torch::manual_seed(42);
    torchtp::GPT full(
        torchtp::GPTOptions(options).group(torchtp::Group::self()));
    auto full_logits = full->full_logits(ids);
    auto full_loss = full->loss(ids, targets);
    full_loss.backward();
    for (const auto& [sp, recompute] : std::vector<std::pair<bool, bool>>{
             {true, false}, {false, true}, {true, true}}) {
      SCOPED_TRACE(
          std::string(sp ? "sequence parallel " : "") +
          (recompute ? "recompute" : ""));
      torch::manual_seed(42);
      torchtp::GPT gpt(
          torchtp::GPTOptions(options).sequence_parallel(sp).recompute(
              recompute));
      EXPECT_TRUE(all_close(gpt->full_logits(ids), full_logits));
      auto loss = gpt->loss(ids, targets);
      EXPECT_TRUE(all_close(loss, full_loss));
      loss.backward();
      expect_grads_match(*gpt, *full, g);
      expect_replicated_grads_identical(*gpt, g);
    }
  }
}

// Dropout everywhere (embedding, attention, both branches): with
// recomputation the loss and gradients of two steps equal those without
// it, at the same world size, with and without sequence parallelism.
TEST(GPT, RecomputeWithDropoutEqualsNoRecompute) {
  auto g = world();
  const int64_t seq = 12;
  torch::manual_seed(48);
  auto ids = torch::randint(0, 13, {2, seq}, torch::kLong);
  auto targets = torch::randint(0, 13, {2, seq}, torch::kLong);
  for (bool sp : {false, true}) {
    SCOPED_TRACE(sp ? "sequence parallel" : "not sequence parallel");
    auto make = [&](bool recompute) {
      torch::manual_seed(42);
      return torchtp::GPT(small_gpt()
                              .max_seq_len(seq)
                              .uneven(twelve_needs_uneven())
                              .hidden_dropout(0.2)
                              .attention_dropout(0.2)
                              .sequence_parallel(sp)
                              .recompute(recompute));
    };
    auto plain = make(false), recomputed = make(true);
    plain->rng().reseed(500);
    recomputed->rng().reseed(500);
    torch::Tensor first;
    for (int step = 0; step < 2; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      auto a = plain->loss(ids, targets), b = recomputed->loss(ids, targets);
      EXPECT_TRUE(all_close(b, a));
      a.backward();
      b.backward();
      expect_grads_match(*recomputed, *plain, g);
      expect_replicated_grads_identical(*recomputed, g);
      if (step == 0) {
        first = a.detach();
      } else {
        EXPECT_FALSE(torch::equal(a.detach(), first)) << "masks must advance";
      }
    }
  }
}

TEST(GPT, SequenceParallelSequenceThatDoesNotDivideRaises) {
  auto g = world();
  // No layers, a vocabulary that divides by 1 to 5: only the sequence is
  // split unevenly.
  torchtp::GPT gpt(
      small_gpt().num_layers(0).vocab_pad_multiple(60).sequence_parallel(true));
  auto ids = torch::zeros({2, 7}, torch::kLong);
  if (g.size() == 1) {
    EXPECT_EQ(gpt->forward(ids).size(1), 7);
    return;
  }
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] { gpt->forward(ids); },
      {"torchtp::GPT", "sequence", "(7)",
       "tensor-parallel size (" + std::to_string(g.size()) + ")",
       g.rank_label()}));
}

// Decoding with a cache runs on whole sequences: a sequence-parallel model
// gives the logits its forward does.
TEST(GPT, SequenceParallelModelDecodesWithACache) {
  torch::manual_seed(42);
  torchtp::GPT gpt(
      small_gpt().max_seq_len(12).uneven(true).sequence_parallel(true));
  gpt->eval();
  torch::manual_seed(49);
  auto ids = torch::randint(0, 13, {2, 12}, torch::kLong);
  torch::NoGradGuard no_grad;
  auto expected = gpt->forward(ids);
  auto cache = gpt->make_cache();
  auto prefill = gpt->forward_cached(ids.narrow(1, 0, 9), cache);
  auto rest = gpt->forward_cached(ids.narrow(1, 9, 3), cache);
  EXPECT_TRUE(all_close(torch::cat({prefill, rest}, 1), expected));
}
