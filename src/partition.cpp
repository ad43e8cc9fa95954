#include "torchtp/partition.h"

#include "detail/check.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace torchtp {

Partition::Partition(
    int64_t full_size,
    int64_t parts,
    int64_t rank,
    const std::string& what,
    bool uneven,
    int64_t unit)
    : full_size_(full_size), rank_(rank), uneven_(uneven), unit_(unit) {
  TORCH_CHECK(
      parts >= 1 && rank >= 0 && rank < parts, "torchtp::Partition: rank ",
      rank, " is outside ", parts, " parts");
  TORCH_CHECK(
      full_size >= 0, what, " (", full_size, ") must not be negative ",
      detail::rank_label(rank, parts));
  TORCH_CHECK(
      unit >= 1 && full_size % unit == 0, what, ": size ", full_size,
      " is not a whole number of units of ", unit, " ",
      detail::rank_label(rank, parts));
  const int64_t units = full_size / unit;
  if (uneven) {
    TORCH_CHECK(
        units == 0 || units >= parts, what, " (", units,
        ") is smaller than the tensor-parallel size (", parts,
        "): every rank needs at least one ",
        detail::rank_label(rank, parts));
  } else {
    TORCH_CHECK(
        units % parts == 0, what, " (", units,
        ") is not divisible by the tensor-parallel size (", parts,
        ") (uneven(true) on the layer's options allows uneven splits) ",
        detail::rank_label(rank, parts));
  }
  // The first units % parts ranks take one unit more; with even units the
  // remainder is 0 and both rules agree.
  sizes_.resize(parts);
  offsets_.resize(parts);
  int64_t offset = 0;
  for (int64_t p = 0; p < parts; ++p) {
    sizes_[p] = (units / parts + (p < units % parts ? 1 : 0)) * unit;
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

int64_t Partition::max_size() const {
  return *std::max_element(sizes_.begin(), sizes_.end());
}

bool Partition::is_even() const {
  return std::all_of(sizes_.begin(), sizes_.end(), [&](int64_t s) {
    return s == sizes_.front();
  });
}

Partition Partition::scaled(int64_t factor) const {
  TORCH_CHECK(
      factor >= 1, "torchtp::Partition: scale factor ", factor,
      " must be positive ", detail::rank_label(rank_, parts()));
  Partition out(*this);
  out.full_size_ *= factor;
  out.unit_ *= factor;
  for (int64_t p = 0; p < parts(); ++p) {
    out.sizes_[p] *= factor;
    out.offsets_[p] *= factor;
  }
  return out;
}

at::Tensor Partition::narrow(const at::Tensor& full, int64_t dim) const {
  TORCHTP_CHECK(
      full.size(dim) == full_size_, "torchtp::Partition",
      detail::RankOf(rank_, parts()), "expected size ", full_size_,
      " along dim ", dim, ", got ", full.sizes());
  return full.narrow(dim, local_offset(), local_size());
}

} // namespace torchtp
