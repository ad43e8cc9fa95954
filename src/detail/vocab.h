#pragma once

#include "detail/check.h"
#include "torchtp/group.h"
#include "torchtp/partition.h"

#include <c10/util/Optional.h>

#include <cstdint>
#include <string>

namespace torchtp::detail {

/// The split of the vocabulary behind logits whose last dim holds
/// `local_size` ids on this rank: `given` when the caller passed one
/// (checked against the group and `local_size`), else learnt from every
/// rank's `local_size` (one small all-gather), so that no caller assumes the
/// vocabulary is `local_size * world_size`. Used by the cross-entropy and the
/// sampling, which both need where this rank's ids start and how many there
/// are in all.
inline Partition vocab_partition(
    int64_t local_size,
    const c10::optional<Partition>& given,
    const Group& group,
    const char* who) {
  if (!given.has_value()) {
    return group.partition_of(local_size, std::string(who) + ": vocabulary");
  }
  TORCHTP_CHECK(
      given->parts() == group.size() && given->rank() == group.rank() &&
          given->local_size() == local_size,
      who, group, "the vocabulary partition (rank ", given->rank(), " of ",
      given->parts(), ", ", given->local_size(),
      " ids here) does not match the logits, ", local_size,
      " ids on this rank of the group");
  return *given;
}

} // namespace torchtp::detail
