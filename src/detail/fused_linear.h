#pragma once

// The linear products of the layers and blocks, each fused with its
// mapping into one autograd function (defined in linear.cpp).

#include "detail/products.h"
#include "torchtp/group.h"
#include "torchtp/partition.h"
#include "torchtp/sharding.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace torchtp::detail {

/// copy_to_tp_region followed by `linear(input, weight, bias, scale)`
/// (products.h: `scale` for an int8 weight), as one autograd function (Megatron's LinearWithGradAccumulationAndAsync...):
/// backward starts the all-reduce of the input gradient, computes the weight
/// and bias gradients while it runs, then waits. Used by
/// ColumnParallelLinear.
at::Tensor copy_to_tp_region_and_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const Group& group,
    const at::Tensor& scale = at::Tensor());

/// `linear(gather_from_sequence_region(input, group, seq, dim), weight,
/// bias, scale)` for a column-parallel `weight` (`bias` may be undefined), as one
/// autograd function that keeps only `input`, this rank's part of the
/// sequence, for backward (Megatron's sequence-parallel linear): backward
/// all-gathers it again for the weight gradient and reduce-scatters the
/// input gradient while that gradient is computed. Saving the gathered
/// input instead would hold the whole sequence and undo sequence
/// parallelism's saving. Used by the sequence-parallel blocks.
at::Tensor gather_sequence_and_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const Group& group,
    const Partition& seq,
    int64_t dim,
    const at::Tensor& scale = at::Tensor());

/// `shard` (a weight or bias of a column-parallel layer split by `spec`,
/// whose `kv_heads` makes ranks share key/value heads), unchanged in
/// forward; backward sums the gradient of every shared head over the ranks
/// that hold it (one all-reduce of the K and V blocks, each rank adding
/// its own heads' gradients and zeros elsewhere). `shard` itself when no
/// head is shared or no gradient is recorded.
at::Tensor sum_shared_heads(
    const at::Tensor& shard, const ShardSpec& spec, const Group& group);

/// reduce_from_tp_region for an input the caller owns (a fresh partial sum
/// that nothing else reads): reduced in place, with no copy. Used by
/// RowParallelLinear.
at::Tensor reduce_from_tp_region_in_place(at::Tensor input, const Group& group);

} // namespace torchtp::detail
