#pragma once

// Resharding: which parts of a checkpoint's saved shards make up a rank's
// shard at another tensor-parallel degree. Pure: it reads no file, so it is
// tested in one process.

#include "torchtp/partition.h"
#include "torchtp/sharding.h"

#include <c10/util/Exception.h>

#include <algorithm>
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

/// The reads that fill shard `rank` of `parts` (the new split, by the
/// same spec as `saved`'s but for the degree), in saved-shard order; saved
/// shards that hold nothing of it, or only indices a lower saved shard
/// holds too, are not read. `saved` must be split (not replicated). `what`
/// names the tensor in the error raised when a degree does not divide it.
inline std::vector<ShardRead> plan_reshard(
    const SavedLayout& saved,
    int64_t parts,
    int64_t rank,
    const std::string& what) {
  const auto& spec = saved.spec;
  TORCH_INTERNAL_ASSERT(
      !spec.is_replicated() &&
          spec.dim < static_cast<int64_t>(saved.shape.size()),
      "resharding needs a split tensor");
  const int64_t full = saved.shape[spec.dim];
  const auto wanted = shard_ranges(spec, full, parts, rank, what);
  std::vector<ShardRead> reads;
  for (int64_t k = 0; k < saved.shards; ++k) {
    // Every full index is taken from the lowest saved shard holding it.
    std::vector<SegmentRange> ranges;
    int64_t held = 0;
    for (const auto& src : owned_ranges(spec, full, saved.shards, k, what)) {
      for (const auto& dst : wanted) {
        const int64_t lo = std::max(src.from, dst.from);
        const int64_t hi =
            std::min(src.from + src.length, dst.from + dst.length);
        if (lo < hi) {
          ranges.push_back(
              {src.to + lo - src.from, dst.to + lo - dst.from, hi - lo});
        }
      }
    }
    for (const auto& r : shard_ranges(spec, full, saved.shards, k, what)) {
      held += r.length;
    }
    if (ranges.empty()) {
      continue; // shard k holds nothing of this rank's shard
    }
    auto shape = saved.shape;
    shape[spec.dim] = held;
    reads.push_back({k, std::move(shape), std::move(ranges)});
  }
  return reads;
}

} // namespace torchtp::detail
