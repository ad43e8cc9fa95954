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
