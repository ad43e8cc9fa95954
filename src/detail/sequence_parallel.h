#pragma once

// Sequence parallelism's pieces that the blocks (transformer.cpp) and the
// GPT (gpt.cpp) share: how the sequence is split, and the norms and
// biases applied to a rank's part of it.

#include "torchtp/group.h"
#include "torchtp/norm.h"
#include "torchtp/partition.h"

#include <torch/types.h>

#include <string>

namespace torchtp::detail {

/// The split of a sequence of `seq_len` positions over `group` that
/// sequence parallelism uses (the one place it is decided): even, or by
/// `Partition`'s uneven rule with `uneven`; `who` names the caller in the
/// error when it does not divide.
Partition sequence_partition(
    int64_t seq_len, const Group& group, const std::string& who, bool uneven);

/// The split of the sequence whose part on this rank is `x` (dim 1 of
/// `[batch, seq, d_model]`): of `seq_len` positions, or `x.size(1)` times
/// the world size when `seq_len` is -1 (not allowed with `uneven`). Checks
/// that `x` holds this rank's part.
Partition sequence_partition_of(
    const torch::Tensor& x,
    int64_t seq_len,
    const Group& group,
    const std::string& who,
    bool uneven);

/// `reduce_scatter_to_sequence_region` along dim 1: partial sums of the
/// whole sequence -> this rank's part of their sum; backward all-gathers.
torch::Tensor reduce_scatter_sequence(
    const torch::Tensor& x, const Group& group, const Partition& seq);

/// `norm` (LayerNorm or RMSNorm) of this rank's part of the sequence with
/// the replicated `norm`'s parameters, whose gradients are summed over
/// `group` in backward (each rank's covers its own positions only).
torch::Tensor norm_on_shard(
    const NormImpl& norm, const torch::Tensor& x, const Group& group);

/// `y + bias` for `y` a part of the sequence and `bias` replicated (may be
/// undefined): the bias gradient is summed over `group` in backward.
torch::Tensor add_bias_on_shard(
    const torch::Tensor& y, const torch::Tensor& bias, const Group& group);

} // namespace torchtp::detail
