#include "torchtp/partition.h"

#include "torchtp/detail/check.h"

#include <c10/util/Exception.h>

namespace torchtp {

Partition::Partition(
    int64_t full_size, int64_t parts, int64_t rank, const std::string& what)
    : full_size_(full_size), rank_(rank) {
  TORCH_CHECK(
      parts >= 1 && rank >= 0 && rank < parts, "torchtp::Partition: rank ",
      rank, " is outside ", parts, " parts");
  TORCH_CHECK(
      full_size >= 0, what, " (", full_size, ") must not be negative ",
      detail::rank_label(rank, parts));
  TORCH_CHECK(
      full_size % parts == 0, what, " (", full_size,
      ") is not divisible by the tensor-parallel size (", parts, ") ",
      detail::rank_label(rank, parts));
  sizes_.assign(parts, full_size / parts);
  offsets_.resize(parts);
  int64_t offset = 0;
  for (int64_t p = 0; p < parts; ++p) {
    offsets_[p] = offset;
    offset += sizes_[p];
  }
}

int64_t Partition::size(int64_t part) const {
  TORCH_CHECK(
      part >= 0 && part < parts(), "torchtp::Partition: no part ", part);
  return sizes_[part];
}

int64_t Partition::offset(int64_t part) const {
  TORCH_CHECK(
      part >= 0 && part < parts(), "torchtp::Partition: no part ", part);
  return offsets_[part];
}

bool Partition::is_even() const {
  for (int64_t s : sizes_) {
    if (s != sizes_.front()) {
      return false;
    }
  }
  return true;
}

at::Tensor Partition::narrow(const at::Tensor& full, int64_t dim) const {
  TORCHTP_CHECK(
      full.size(dim) == full_size_, "torchtp::Partition",
      detail::RankOf(rank_, parts()), "expected size ", full_size_,
      " along dim ", dim, ", got ", full.sizes());
  return full.narrow(dim, local_offset(), local_size());
}

} // namespace torchtp
