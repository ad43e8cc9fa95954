#pragma once

// Resharding: which parts of a checkpoint's saved shards make up a rank's
// shard at another tensor-parallel degree. Pure: it reads no file, so it is
// tested in one process.

#include "torchtp/partition.h"
#include "torchtp/sharding.h"

#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace torchtp::detail {

/// How a split tensor was saved: its full shape, its split (even or uneven,
/// and in what units) and the number of shards (the tensor-parallel degree
/// it was saved at).
struct SavedLayout {
  std::vector<int64_t> shape;
  ShardSpec spec;
  int64_t shards = 1;
};

/// What a rank reads from one saved shard.
struct ShardRead {
  /// The saved shard, by rank.
  int64_t shard;
  /// Its shape, to check what is read against.
  std::vector<int64_t> shape;
  /// Along the split dim: `from` an index of the saved shard, `to` an index
  /// of the new one.
  std::vector<SegmentRange> ranges;
};

/// The reads that fill the shard of `now.rank()`, where `now` splits one
/// segment of `saved`'s split dim over the new group, in shard order; saved
/// shards that hold nothing of it are not read. `saved` must be split (not
/// replicated) with a full shape that has `now.full_size()` per segment.
/// `what` names the tensor in the error raised when the saved degree does
/// not divide a segment.
inline std::vector<ShardRead> plan_reshard(
    const SavedLayout& saved, const Partition& now, const std::string& what) {
  const auto& spec = saved.spec;
  TORCH_INTERNAL_ASSERT(
      !spec.is_replicated() &&
          spec.dim < static_cast<int64_t>(saved.shape.size()),
      "resharding needs a split tensor");
  TORCH_INTERNAL_ASSERT(
      saved.shape[spec.dim] == spec.segments * now.full_size(),
      "the new split does not cover the saved dim");
  const Partition then =
      spec.partition(now.full_size(), saved.shards, /*rank=*/0, what);
  std::vector<ShardRead> reads;
  for (int64_t k = 0; k < saved.shards; ++k) {
    auto ranges = overlap_ranges(then, k, now, spec.segments);
    if (ranges.empty()) {
      continue; // shard k holds nothing of this rank's shard
    }
    auto shape = saved.shape;
    shape[spec.dim] = spec.segments * then.size(k);
    reads.push_back({k, std::move(shape), std::move(ranges)});
  }
  return reads;
}

} // namespace torchtp::detail
