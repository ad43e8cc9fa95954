// RngTracker's replicated and sharded dropout streams across ranks, and
// torchtp::dropout's identity cases and scaling.

#include "reference.h"

using torchtp::testing::all_close;
using torchtp::testing::world;

namespace {

// The mask of one dropout draw on this rank, gathered: row r is rank r's.
torch::Tensor gathered_mask(torch::Generator& gen) {
  auto kept = torchtp::dropout(
                  torch::ones({256}, torch::kDouble), 0.5,
                  /*training=*/true, gen) != 0;
  return world().all_gather(kept.to(torch::kDouble).unsqueeze(0), 0);
}

} // namespace

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
