#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace torchtp {

/// How one dimension of `full_size` indices is split over `parts` ranks: the
/// size and offset of every part. It is the single place that decides a
/// split; no other code may assume the parts are equal.
///
/// The dimension is split in units of `unit` indices (1; a head's width for
/// attention heads), so a rank always holds whole units. By default the
/// number of units must divide by `parts`: otherwise a `c10::Error` names
/// `what`, both numbers and the rank. With `uneven`, the first
/// `units % parts` ranks hold one unit more than the others (12 heads over
/// 5 ranks: 3, 3, 2, 2, 2), and every rank must hold at least one unit; when
/// the units divide, both rules give the same parts.
///
/// Example:
/// ```
///   torchtp::Partition p(4096, 4, /*rank=*/1, "out_features");
///   p.local_size();   // 1024
///   p.local_offset(); // 1024
///   auto shard = p.narrow(full_weight, /*dim=*/0);
///   torchtp::Partition v(50257, 4, 1, "vocabulary", /*uneven=*/true);
///   v.sizes();        // 12565, 12564, 12564, 12564
/// ```
class Partition {
 public:
  /// Splits `full_size` over `parts` ranks as seen from `rank`; `what` names
  /// the split units in the error (e.g. "torchtp::ColumnParallelLinear:
  /// out_features", or "num_heads" with a head's width as `unit`).
  Partition(
      int64_t full_size,
      int64_t parts,
      int64_t rank,
      const std::string& what,
      bool uneven = false,
      int64_t unit = 1);

  int64_t full_size() const {
    return full_size_;
  }
  int64_t parts() const {
    return static_cast<int64_t>(sizes_.size());
  }
  int64_t rank() const {
    return rank_;
  }
  /// Whether the uneven rule was asked for (the parts may still be equal).
  bool uneven() const {
    return uneven_;
  }
  /// Indices per unit: parts hold whole units.
  int64_t unit() const {
    return unit_;
  }
  /// Size of `part`.
  int64_t size(int64_t part) const;
  /// First index of `part` in the full dimension.
  int64_t offset(int64_t part) const;
  /// Size and offset of this rank's part.
  int64_t local_size() const {
    return size(rank_);
  }
  int64_t local_offset() const {
    return offset(rank_);
  }
  /// Sizes of every part, in rank order.
  const std::vector<int64_t>& sizes() const {
    return sizes_;
  }
  /// The largest part.
  int64_t max_size() const;
  /// True when every part has the same size.
  bool is_even() const;
  /// The same split with every unit `factor` times wider: part p holds
  /// `factor * size(p)` indices. E.g. a split of heads scaled by the head
  /// width is the split of their features; a split of one segment scaled by
  /// the number of segments is the size of every rank's fused shard.
  Partition scaled(int64_t factor) const;
  /// This rank's slice of `full` along `dim` (a view; `full.size(dim)` must
  /// equal `full_size()`).
  at::Tensor narrow(const at::Tensor& full, int64_t dim) const;

 private:
  int64_t full_size_;
  int64_t rank_;
  bool uneven_;
  int64_t unit_;
  std::vector<int64_t> sizes_;
  std::vector<int64_t> offsets_;
};

} // namespace torchtp
