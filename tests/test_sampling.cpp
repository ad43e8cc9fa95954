// Next-token choice on vocabulary-parallel logits, at every world size,
// against the same choice made in plain LibTorch on the full logits.

#include "test_util.h"

#include <ATen/CPUGeneratorImpl.h>

#include <string>

namespace {

using torchtp::testing::world;

constexpr int64_t kVocab = 24; // divides 1, 2, 3 and 4 ranks

// Full logits, the same on every rank, and this rank's shard of them.
torch::Tensor full_logits(int64_t rows, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({rows, kVocab}, torch::kDouble);
}

torch::Tensor shard(const torch::Tensor& full) {
  const auto g = world();
  const int64_t n = full.size(-1) / g.size();
  return full.narrow(-1, g.rank() * n, n).contiguous();
}

at::Generator generator(uint64_t seed) {
  return at::detail::createCPUGenerator(seed);
}

// --- the unsharded references --------------------------------------------

// Ids of `x` [rows, V] by decreasing value, equal values by id.
torch::Tensor ranked_ids(const torch::Tensor& x) {
  return std::get<1>(x.sort(/*stable=*/true, 1, /*descending=*/true));
}

// Hugging Face's nucleus rule on probabilities `p` sorted largest first:
// sorted ascending, the tokens whose cumulative mass is at most 1 - top_p
// are removed; the most likely token always stays.
torch::Tensor nucleus_ref(const torch::Tensor& p, double top_p) {
  auto ascending = p.flip(1);
  auto remove = ascending.cumsum(1) <= (1 - top_p) * p.sum(1, true);
  remove.select(1, remove.size(1) - 1).fill_(false);
  return p.masked_fill(remove.flip(1), 0);
}

// The token where u falls in the cumulative distribution of weights `w`.
torch::Tensor draw_ref(
    const torch::Tensor& ids, const torch::Tensor& w, const torch::Tensor& u) {
  std::vector<int64_t> out;
  for (int64_t r = 0; r < w.size(0); ++r) {
    const double target = u[r].item<double>() * w[r].sum().item<double>();
    double cum = 0;
    int64_t pick = -1;
    for (int64_t j = 0; j < w.size(1); ++j) {
      cum += w[r][j].item<double>();
      if (w[r][j].item<double>() > 0 && cum > target) {
        pick = ids[r][j].item<int64_t>();
        break;
      }
    }
    out.push_back(pick);
  }
  return torch::tensor(out, torch::kLong);
}

torch::Tensor sample_ref(
    const torch::Tensor& full,
    const torch::Tensor& u,
    const torchtp::SamplingOptions& o) {
  const int64_t real = o.vocab_size() > 0 ? o.vocab_size() : full.size(1);
  auto x = full.narrow(1, 0, real).to(torch::kDouble);
  if (o.greedy()) {
    return x.argmax(1);
  }
  x = x / o.temperature();
  if (o.top_k() == 0 && o.top_p() >= 1) {
    auto ids = torch::arange(real, torch::kLong).expand({x.size(0), real});
    return draw_ref(ids, torch::softmax(x, 1), u);
  }
  auto ids = ranked_ids(x);
  auto vals = x.gather(1, ids);
  if (o.top_k() > 0) {
    ids = ids.narrow(1, 0, std::min(o.top_k(), real));
    vals = vals.narrow(1, 0, ids.size(1));
  }
  auto p = torch::softmax(vals, 1);
  if (o.top_p() < 1) {
    p = nucleus_ref(p, o.top_p());
  }
  return draw_ref(ids, p, u);
}

// Samples `steps` times with the library on the shards and the reference on
// the full logits, from generators seeded alike, and compares every token.
void expect_same_tokens(
    torchtp::SamplingOptions o, int64_t rows, int steps, uint64_t seed) {
  auto lib_gen = generator(seed);
  auto ref_gen = generator(seed);
  for (int s = 0; s < steps; ++s) {
    auto full = full_logits(rows, seed * 100 + s);
    auto got = torchtp::sample_next_token(shard(full), lib_gen, o);
    auto u = at::rand({rows}, ref_gen, at::kDouble);
    auto want = sample_ref(full, u, o);
    ASSERT_TRUE(torch::equal(got, want))
        << "step " << s << ": got " << got << " expected " << want << " "
        << world().rank_label();
  }
}

} // namespace

TEST(VocabParallelTopK, EqualsTheFullSortAndKeepsPaddingOut) {
  auto full = full_logits(5, 1);
  for (int64_t vocab : {int64_t{0}, int64_t{17}}) {
    const int64_t real = vocab > 0 ? vocab : kVocab;
    for (int64_t k : {int64_t{1}, int64_t{3}, int64_t{7}, real}) {
      auto top = torchtp::vocab_parallel_topk(shard(full), k, vocab);
      auto ids = ranked_ids(full.narrow(1, 0, real)).narrow(1, 0, k);
      EXPECT_TRUE(torch::equal(top.ids, ids))
          << "k " << k << " vocab " << vocab;
      EXPECT_TRUE(torch::equal(top.values, full.gather(1, ids)));
    }
  }
}

TEST(VocabParallelTopK, MoreThanTheRealVocabularyEndsInMinusInfinity) {
  auto full = full_logits(2, 2);
  auto top = torchtp::vocab_parallel_topk(shard(full), 20, 17);
  EXPECT_TRUE(torch::equal(
      top.ids.narrow(1, 0, 17), ranked_ids(full.narrow(1, 0, 17))));
  EXPECT_TRUE(torch::equal(
      top.ids.narrow(1, 17, 3), torch::full({2, 3}, -1, torch::kLong)));
  EXPECT_TRUE(top.values.narrow(1, 17, 3).isinf().all().item<bool>());
}

TEST(VocabParallelTopK, EqualValuesOnSeveralRanksAreOrderedById) {
  // Every block of 12 ids repeats the same values: each value appears on
  // several ranks (at 2, 3 or 4 ranks) or twice on one (at 1).
  torch::manual_seed(3);
  auto block = torch::randn({3, kVocab / 2}, torch::kDouble);
  auto full = torch::cat({block, block}, 1);
  auto top = torchtp::vocab_parallel_topk(shard(full), kVocab);
  EXPECT_TRUE(torch::equal(top.ids, ranked_ids(full)));
  // Batched leading dims keep their shape.
  auto top3 = torchtp::vocab_parallel_topk(shard(full).reshape({3, 1, -1}), 2);
  EXPECT_EQ(top3.ids.sizes(), torch::IntArrayRef({3, 1, 2}));
}

TEST(SampleNextToken, GreedyIsTheArgmaxWithTiesToTheLowestId) {
  auto full = full_logits(4, 4);
  full[1].fill_(0.5);        // every id tied: id 0
  full[2][kVocab - 1] = 100; // the last rank's last id
  expect_same_tokens(torchtp::SamplingOptions().greedy(true), 4, 1, 4);
  auto got = torchtp::sample_next_token(
      shard(full), generator(0), torchtp::SamplingOptions().greedy(true));
  EXPECT_EQ(got[1].item<int64_t>(), 0);
  EXPECT_EQ(got[2].item<int64_t>(), kVocab - 1);
  // Padding is never the answer, however large.
  full[3][kVocab - 1] = 1000;
  got = torchtp::sample_next_token(
      shard(full), generator(0),
      torchtp::SamplingOptions().greedy(true).vocab_size(17));
  EXPECT_LT(got[3].item<int64_t>(), 17);
}

TEST(SampleNextToken, TemperatureAloneMatchesTheFullSoftmax) {
  expect_same_tokens(torchtp::SamplingOptions().temperature(0.7), 6, 20, 5);
  expect_same_tokens(
      torchtp::SamplingOptions().temperature(1.3).vocab_size(17), 6, 20, 6);
}

TEST(SampleNextToken, TopKMatchesTheFullSoftmaxOverTheKBest) {
  expect_same_tokens(torchtp::SamplingOptions().top_k(5), 6, 20, 7);
  expect_same_tokens(
      torchtp::SamplingOptions().top_k(3).temperature(0.5).vocab_size(17), 6,
      20, 8);
}

TEST(SampleNextToken, TopPMatchesTheNucleusOfTheFullSoftmax) {
  expect_same_tokens(torchtp::SamplingOptions().top_p(0.8), 6, 20, 9);
  expect_same_tokens(
      torchtp::SamplingOptions().top_p(0.5).temperature(2).vocab_size(17), 6,
      20, 10);
  // With top-k first, the nucleus of the renormalised top-k.
  expect_same_tokens(torchtp::SamplingOptions().top_k(6).top_p(0.7), 6, 20, 11);
}

TEST(SampleNextToken, TopPNearOneGathersMoreThanTheFirstCandidates) {
  // A flat distribution: the nucleus holds nearly every id.
  auto lib_gen = generator(12);
  auto ref_gen = generator(12);
  auto full = torch::zeros({2, kVocab}, torch::kDouble);
  full[1] = torch::linspace(0, 0.01, kVocab, torch::kDouble);
  auto o = torchtp::SamplingOptions().top_p(0.99);
  for (int s = 0; s < 10; ++s) {
    auto got = torchtp::sample_next_token(shard(full), lib_gen, o);
    auto want = sample_ref(full, at::rand({2}, ref_gen, at::kDouble), o);
    EXPECT_TRUE(torch::equal(got, want)) << got << " vs " << want;
  }
}

TEST(SampleNextToken, BadOptionsRaiseWithTheRank) {
  auto s = shard(full_logits(2, 13));
  const auto label = world().rank_label();
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] {
        torchtp::sample_next_token(
            s, generator(0), torchtp::SamplingOptions().temperature(0));
      },
      {"torchtp::sample_next_token", "temperature", label}));
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] {
        torchtp::sample_next_token(
            s, generator(0), torchtp::SamplingOptions().top_p(0));
      },
      {"top_p", label}));
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] {
        torchtp::sample_next_token(
            s, generator(0), torchtp::SamplingOptions().vocab_size(kVocab + 1));
      },
      {"vocab_size (25)", "[0, 24]", label}));
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] { torchtp::vocab_parallel_topk(s.to(torch::kLong), 2); },
      {"torchtp::vocab_parallel_topk", "floating-point", label}));
}
