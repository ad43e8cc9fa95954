#pragma once

#include "torchtp/group.h"

#include <ATen/core/Tensor.h>

namespace torchtp {

// The tensor-parallel region mappings (Megatron's names): autograd functions
// whose backward runs the adjoint collective of their forward. At a group of
// one rank each is the identity and records nothing.
//
// | mapping                            | forward        | backward       |
// | copy_to_tp_region                  | identity       | all-reduce     |
// | reduce_from_tp_region              | all-reduce     | identity       |
// | scatter_to_tp_region (last dim)    | keep own chunk | all-gather     |
// | gather_from_tp_region (last dim)   | all-gather     | keep own chunk |
// | gather_from_sequence_region (dim 0)| all-gather     | reduce-scatter |
// | reduce_scatter_to_sequence_region  | reduce-scatter | all-gather     |

/// Enters a tensor-parallel region with a replicated input: identity forward;
/// backward sums the input gradients of every rank.
at::Tensor copy_to_tp_region(const at::Tensor& input, const Group& group);

/// Leaves a region of partial sums: forward all-reduces (sum); backward passes
/// the gradient through, since every rank's output was the same full sum.
at::Tensor reduce_from_tp_region(const at::Tensor& input, const Group& group);

/// Keeps this rank's chunk of the last dim (split evenly by `Partition`);
/// backward all-gathers the chunk gradients into the full one.
at::Tensor scatter_to_tp_region(const at::Tensor& input, const Group& group);
/// The same with the last dim split by `part` (even or not).
at::Tensor scatter_to_tp_region(
    const at::Tensor& input, const Group& group, const Partition& part);

/// All-gathers the last dim; backward keeps this rank's chunk of the gradient.
at::Tensor gather_from_tp_region(const at::Tensor& input, const Group& group);
/// The same with rank r's chunk of `part.size(r)` indices.
at::Tensor gather_from_tp_region(
    const at::Tensor& input, const Group& group, const Partition& part);

/// Sequence parallelism: all-gathers dim 0 (the sequence); backward
/// reduce-scatters the gradient along dim 0.
at::Tensor gather_from_sequence_region(
    const at::Tensor& input, const Group& group);
/// The same along `dim`, rank r's part holding `seq.size(r)` positions.
at::Tensor gather_from_sequence_region(
    const at::Tensor& input,
    const Group& group,
    const Partition& seq,
    int64_t dim);

/// Sequence parallelism: sums over ranks and keeps this rank's chunk of dim 0;
/// backward all-gathers the gradient along dim 0.
at::Tensor reduce_scatter_to_sequence_region(
    const at::Tensor& input, const Group& group);
/// The same along `dim`, this rank keeping its part of `seq`.
at::Tensor reduce_scatter_to_sequence_region(
    const at::Tensor& input,
    const Group& group,
    const Partition& seq,
    int64_t dim);

} // namespace torchtp
