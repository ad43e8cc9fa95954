// vocab_parallel_cross_entropy against F::cross_entropy on the full (real)
// logits: every reduction, label smoothing, a padded vocabulary, bfloat16,
// and bad targets. Every rank holds its slice of the vocabulary.

#include "reference.h"

#include <algorithm>
#include <string>

using torchtp::testing::all_close;
using torchtp::testing::leaf;
using torchtp::testing::own;
using torchtp::testing::raises_with;
using torchtp::testing::tolerance_for;
using torchtp::testing::world;

namespace F = torch::nn::functional;

namespace {

using Reduction = torchtp::VocabParallelCrossEntropyOptions::Reduction;

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

} // namespace

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
