#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace torchtp {

/// How one dimension of `full_size` is split over `parts` ranks: the size and
/// offset of every part. It is the single place that decides a split; no other
/// code may assume the parts are equal.
///
/// Today the parts must be equal: a size that does not divide raises a
/// `c10::Error` that names `what`, both numbers and the rank. Uneven splits
/// are a planned option and will only change this class.
///
/// Example:
/// ```
///   torchtp::Partition p(4096, 4, /*rank=*/1, "out_features");
///   p.local_size();   // 1024
///   p.local_offset(); // 1024
///   auto shard = p.narrow(full_weight, /*dim=*/0);
/// ```
class Partition {
 public:
  /// Splits `full_size` over `parts` ranks as seen from `rank`; `what` names
  /// the dimension in the error (e.g. "torchtp::ColumnParallelLinear:
  /// out_features").
  Partition(
      int64_t full_size, int64_t parts, int64_t rank, const std::string& what);

  int64_t full_size() const {
    return full_size_;
  }
  int64_t parts() const {
    return static_cast<int64_t>(sizes_.size());
  }
  int64_t rank() const {
    return rank_;
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
  /// True when every part has the same size.
  bool is_even() const;
  /// This rank's slice of `full` along `dim` (a view; `full.size(dim)` must
  /// equal `full_size()`).
  at::Tensor narrow(const at::Tensor& full, int64_t dim) const;

 private:
  int64_t full_size_;
  int64_t rank_;
  std::vector<int64_t> sizes_;
  std::vector<int64_t> offsets_;
};

} // namespace torchtp
