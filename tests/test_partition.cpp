// Single-process tests of Partition: how a size splits over the ranks.

#include <torchtp/torchtp.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

TEST(Partition, EqualPartsHaveConsecutiveOffsets) {
  for (int64_t parts : {1, 2, 3, 4, 8}) {
    for (int64_t rank = 0; rank < parts; ++rank) {
      torchtp::Partition p(24, parts, rank, "x");
      EXPECT_EQ(p.local_size(), 24 / parts);
      EXPECT_EQ(p.local_offset(), rank * (24 / parts));
      EXPECT_TRUE(p.is_even());
      int64_t total = 0;
      for (int64_t q = 0; q < parts; ++q) {
        EXPECT_EQ(p.offset(q), total);
        total += p.size(q);
      }
      EXPECT_EQ(total, 24);
    }
  }
}

TEST(Partition, SizeThatDoesNotDivideNamesBothNumbersAndTheRank) {
  try {
    torchtp::Partition p(10, 4, 1, "torchtp::Thing: out_features");
    FAIL() << "did not raise";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("torchtp::Thing: out_features (10)"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("tensor-parallel size (4)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[rank 1/4]"), std::string::npos) << msg;
  }
}

TEST(Partition, NarrowTakesThisRanksSlice) {
  auto full = torch::arange(12).reshape({3, 4});
  torchtp::Partition p(4, 2, 1, "x");
  EXPECT_TRUE(torch::equal(p.narrow(full, 1), full.narrow(1, 2, 2)));
  EXPECT_THROW(p.narrow(full, 0), c10::Error);
}

TEST(Partition, RejectsARankOutsideTheParts) {
  EXPECT_THROW(torchtp::Partition(8, 2, 2, "x"), c10::Error);
  EXPECT_THROW(torchtp::Partition(8, 0, 0, "x"), c10::Error);
}

// The uneven rule: the first `units % parts` ranks hold one unit more.
TEST(Partition, UnevenGivesTheFirstRanksOneMoreUnit) {
  std::vector<int64_t> sizes;
  for (int64_t rank = 0; rank < 5; ++rank) {
    torchtp::Partition p(12, 5, rank, "num_heads", /*uneven=*/true);
    EXPECT_EQ(p.sizes(), std::vector<int64_t>({3, 3, 2, 2, 2}));
    EXPECT_EQ(p.local_offset(), std::vector<int64_t>({0, 3, 6, 8, 10})[rank]);
    EXPECT_FALSE(p.is_even());
    EXPECT_EQ(p.max_size(), 3);
  }
  torchtp::Partition v(50257, 4, 3, "vocabulary", /*uneven=*/true);
  EXPECT_EQ(v.sizes(), std::vector<int64_t>({12565, 12564, 12564, 12564}));
  EXPECT_EQ(v.local_offset(), 12565 + 2 * 12564);
  // Sizes that divide split the same way under both rules.
  torchtp::Partition even(24, 4, 1, "x");
  torchtp::Partition uneven(24, 4, 1, "x", /*uneven=*/true);
  EXPECT_EQ(even.sizes(), uneven.sizes());
  EXPECT_TRUE(uneven.is_even());
}

TEST(Partition, UnitsKeepWholeHeadsOnEveryRank) {
  // 12 heads of width 4 over 5 ranks: whole heads, 3, 3, 2, 2, 2.
  torchtp::Partition p(48, 5, 2, "num_heads", /*uneven=*/true, /*unit=*/4);
  EXPECT_EQ(p.sizes(), std::vector<int64_t>({12, 12, 8, 8, 8}));
  EXPECT_EQ(p.local_offset(), 24);
  EXPECT_EQ(p.unit(), 4);
  // A split of heads scaled by the head width is the same split.
  auto heads = torchtp::Partition(12, 5, 2, "num_heads", true).scaled(4);
  EXPECT_EQ(heads.sizes(), p.sizes());
  EXPECT_EQ(heads.full_size(), 48);
  EXPECT_EQ(heads.local_offset(), p.local_offset());
  // Even splits count units too: 12 heads do not divide over 8 ranks,
  // though 48 features would.
  EXPECT_THROW(torchtp::Partition(48, 8, 0, "num_heads", false, 4), c10::Error);
  EXPECT_THROW(torchtp::Partition(50, 5, 0, "x", true, 4), c10::Error);
}

TEST(Partition, UnevenNeedsAUnitOnEveryRank) {
  try {
    torchtp::Partition p(3, 5, 4, "torchtp::Thing: num_heads", true);
    FAIL() << "did not raise";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("num_heads (3) is smaller than the tensor-parallel "
                       "size (5)"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("[rank 4/5]"), std::string::npos) << msg;
  }
  // One unit per rank is enough: an odd split of 1 element on a rank.
  torchtp::Partition p(5, 4, 3, "x", true);
  EXPECT_EQ(p.sizes(), std::vector<int64_t>({2, 1, 1, 1}));
}

TEST(Partition, EvenErrorPointsAtTheUnevenOption) {
  try {
    torchtp::Partition p(10, 4, 1, "x");
    FAIL() << "did not raise";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("uneven(true)"), std::string::npos) << msg;
  }
}
