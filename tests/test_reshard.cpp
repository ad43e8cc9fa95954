// Single-process tests of resharding a checkpoint and of the fused-segment
// layout it relies on: the reads planned for every rank of the new
// tensor-parallel degree, applied to the shards saved at the old one, rebuild
// the full tensor exactly.

#include "checkpoint/reshard.h"

#include <torchtp/partition.h>
#include <torchtp/sharding.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using torchtp::Partition;
using torchtp::ShardSpec;
using torchtp::detail::plan_reshard;
using torchtp::detail::SavedLayout;

constexpr int64_t kSegment = 12; // divisible by 1, 2, 3 and 4

// A different value in every element, so a misplaced one shows.
torch::Tensor numbered(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    n *= s;
  }
  return torch::arange(n, torch::kDouble).reshape(shape);
}

// The full tensor's shard for `rank` of `tp`, written out by hand from the
// layout's definition: its part of each segment, segments in order.
torch::Tensor by_hand(
    const torch::Tensor& full,
    const ShardSpec& spec,
    int64_t tp,
    int64_t rank) {
  const int64_t len = kSegment / tp;
  std::vector<torch::Tensor> parts;
  for (int64_t s = 0; s < spec.segments; ++s) {
    parts.push_back(full.narrow(spec.dim, s * kSegment + rank * len, len));
  }
  return torch::cat(parts, spec.dim);
}

struct Case {
  int64_t saved_tp;
  int64_t loaded_tp;
  int64_t dim;
  int64_t segments;
};

std::ostream& operator<<(std::ostream& os, const Case& c) {
  return os << c.saved_tp << " to " << c.loaded_tp << " ranks, dim " << c.dim
            << ", " << c.segments << " segments";
}

class Reshard : public ::testing::TestWithParam<Case> {};

} // namespace

TEST_P(Reshard, PlannedCopiesRebuildTheFullTensorExactly) {
  const auto c = GetParam();
  const ShardSpec spec{c.dim, c.segments};
  std::vector<int64_t> shape = {5, 7};
  shape[c.dim] = c.segments * kSegment;
  const auto full = numbered(shape);
  std::vector<torch::Tensor> saved;
  for (int64_t k = 0; k < c.saved_tp; ++k) {
    saved.push_back(by_hand(full, spec, c.saved_tp, k));
  }
  const SavedLayout layout{shape, spec, c.saved_tp};

  // Each new rank fills its shard from the saved shards the plan names.
  auto rebuilt = torch::full(shape, NAN, torch::kDouble);
  for (int64_t r = 0; r < c.loaded_tp; ++r) {
    SCOPED_TRACE("new rank " + std::to_string(r));
    const Partition now(kSegment, c.loaded_tp, r, "weight");
    auto local_shape = shape;
    local_shape[c.dim] = c.segments * now.local_size();
    auto shard = torch::full(local_shape, NAN, torch::kDouble);
    std::vector<int64_t> read;
    for (const auto& plan : plan_reshard(layout, c.loaded_tp, r, "weight")) {
      ASSERT_LT(plan.shard, c.saved_tp);
      EXPECT_EQ(at::IntArrayRef(plan.shape), saved[plan.shard].sizes());
      read.push_back(plan.shard);
      for (const auto& range : plan.ranges) {
        shard.narrow(c.dim, range.to, range.length)
            .copy_(saved[plan.shard].narrow(c.dim, range.from, range.length));
      }
    }
    // Only the saved shards that overlap this rank's slice are read.
    std::vector<int64_t> overlapping;
    const int64_t then_len = kSegment / c.saved_tp;
    for (int64_t k = 0; k < c.saved_tp; ++k) {
      if (k * then_len < now.local_offset() + now.local_size() &&
          now.local_offset() < (k + 1) * then_len) {
        overlapping.push_back(k);
      }
    }
    EXPECT_EQ(read, overlapping);
    EXPECT_FALSE(shard.isnan().any().item<bool>()) << "an element not written";
    EXPECT_TRUE(torch::equal(shard, by_hand(full, spec, c.loaded_tp, r)));
    // Put back by hand where the layout says it came from.
    for (int64_t s = 0; s < c.segments; ++s) {
      rebuilt.narrow(c.dim, s * kSegment + now.local_offset(), now.local_size())
          .copy_(shard.narrow(c.dim, s * now.local_size(), now.local_size()));
    }
  }
  EXPECT_TRUE(torch::equal(rebuilt, full));
}

INSTANTIATE_TEST_SUITE_P(
    SavedAndLoadedDegrees,
    Reshard,
    ::testing::Values(
        Case{2, 3, 0, 3},
        Case{4, 1, 0, 3},
        Case{1, 4, 0, 3},
        Case{3, 2, 1, 3},
        Case{2, 4, 1, 1},
        Case{4, 3, 0, 1}),
    [](const ::testing::TestParamInfo<Case>& info) {
      const auto& c = info.param;
      return "From" + std::to_string(c.saved_tp) + "To" +
             std::to_string(c.loaded_tp) + "Dim" + std::to_string(c.dim) +
             "Segments" + std::to_string(c.segments);
    });

TEST(FusedLayout, ShardOfIsEachRanksPartOfEverySegment) {
  const auto full = numbered({3 * kSegment, 5});
  for (int64_t tp : {1, 2, 3, 4}) {
    for (int64_t r = 0; r < tp; ++r) {
      const Partition part(kSegment, tp, r, "qkv");
      EXPECT_TRUE(torch::equal(
          torchtp::shard_of(full, 0, 3, part),
          by_hand(full, ShardSpec{0, 3}, tp, r)))
          << tp << " ranks, rank " << r;
    }
  }
}

TEST(FusedLayout, FullFromGatheredIsTheOppositeOfShardOf) {
  // The last dim, as ColumnParallelLinear gathers its output.
  const auto full = numbered({2, 4, 3 * kSegment});
  for (int64_t tp : {1, 2, 3, 4}) {
    std::vector<torch::Tensor> shards;
    for (int64_t r = 0; r < tp; ++r) {
      shards.push_back(
          torchtp::shard_of(full, -1, 3, Partition(kSegment, tp, r, "qkv")));
    }
    const auto gathered = torch::cat(shards, -1); // rank-major
    EXPECT_TRUE(torch::equal(
        torchtp::full_from_gathered(
            gathered, -1, 3, Partition(kSegment, tp, 0, "qkv")),
        full))
        << tp << " ranks";
  }
}

TEST(FusedLayout, OneSegmentShardIsAView) {
  const auto full = numbered({kSegment, 3});
  const auto shard =
      torchtp::shard_of(full, 0, 1, Partition(kSegment, 4, 2, "w"));
  EXPECT_EQ(shard.data_ptr(), full[6].data_ptr());
}

// Grouped-query attention's [Q; K; V]: 8 query heads reading 2 key/value
// heads (4 each), 3 rows per head. Rank r of tp holds its query heads (by
// Partition's uneven rule) and the key/value heads those read, written out
// here head by head.
torch::Tensor grouped_by_hand(const torch::Tensor& full, int64_t tp, int64_t r) {
  constexpr int64_t q_heads = 8, kv_heads = 2, hd = 3;
  const Partition q(q_heads, tp, r, "q heads", /*uneven=*/true);
  std::vector<torch::Tensor> rows;
  for (int64_t h = q.local_offset(); h < q.local_offset() + q.local_size(); ++h) {
    rows.push_back(full.narrow(0, h * hd, hd));
  }
  std::vector<int64_t> kv;
  for (int64_t h = q.local_offset(); h < q.local_offset() + q.local_size(); ++h) {
    if (kv.empty() || kv.back() != h / (q_heads / kv_heads)) {
      kv.push_back(h / (q_heads / kv_heads));
    }
  }
  for (int64_t block : {1, 2}) { // K, then V
    for (int64_t k : kv) {
      rows.push_back(full.narrow(
          0, q_heads * hd + (block - 1) * kv_heads * hd + k * hd, hd));
    }
  }
  return torch::cat(rows, 0);
}

TEST(GroupedQueryLayout, ReshardsBetweenEveryPairOfDegreesUpToSix) {
  ShardSpec spec{0, 3, 12 * 3, /*uneven=*/true, /*unit=*/3, /*kv_heads=*/2};
  const auto full = numbered({12 * 3, 2});
  for (int64_t saved_tp = 1; saved_tp <= 6; ++saved_tp) {
    std::vector<torch::Tensor> saved;
    for (int64_t k = 0; k < saved_tp; ++k) {
      saved.push_back(grouped_by_hand(full, saved_tp, k));
    }
    const SavedLayout layout{{12 * 3, 2}, spec, saved_tp};
    for (int64_t tp = 1; tp <= 6; ++tp) {
      for (int64_t r = 0; r < tp; ++r) {
        SCOPED_TRACE(
            "from " + std::to_string(saved_tp) + " to " + std::to_string(tp) +
            ", rank " + std::to_string(r));
        const auto expected = grouped_by_hand(full, tp, r);
        auto shard = torch::full(expected.sizes(), NAN, torch::kDouble);
        for (const auto& plan : plan_reshard(layout, tp, r, "qkv")) {
          EXPECT_EQ(at::IntArrayRef(plan.shape), saved[plan.shard].sizes());
          for (const auto& range : plan.ranges) {
            shard.narrow(0, range.to, range.length)
                .copy_(saved[plan.shard].narrow(0, range.from, range.length));
          }
        }
        EXPECT_TRUE(torch::equal(shard, expected));
      }
    }
  }
}
