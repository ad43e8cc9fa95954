#pragma once

#include "torchtp/group.h"
#include "torchtp/partition.h"

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>

namespace torchtp {

/// Options of `vocab_parallel_cross_entropy`; the names and defaults of
/// `torch::nn::functional::CrossEntropyFuncOptions`.
struct VocabParallelCrossEntropyOptions {
  enum class Reduction { none, mean, sum };

  /// Targets equal to this contribute no loss and no gradient; `mean`
  /// divides by the number of the others.
  TORCH_ARG(int64_t, ignore_index) = -100;
  /// Mixes the one-hot target with the uniform distribution over the FULL
  /// vocabulary (`vocab_size`), as torch does on the unsharded logits.
  TORCH_ARG(double, label_smoothing) = 0.0;
  TORCH_ARG(Reduction, reduction) = Reduction::mean;
  /// The real vocabulary size when the logits are padded (e.g. to a multiple
  /// of the world size): entries at or past it are padding, left out of the
  /// softmax and the smoothing. 0: every entry is real.
  TORCH_ARG(int64_t, vocab_size) = 0;
  /// Ranks holding the vocabulary shards; default: the group of
  /// `init_from_env()`.
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  /// How the vocabulary is split (e.g. the output layer's
  /// `output_partition()`, even or not). Default: learnt from every rank's
  /// shard width, one small all-gather per call.
  TORCH_ARG(c10::optional<Partition>, vocab_partition) = c10::nullopt;
};

/// Cross-entropy over logits whose last dim (the vocabulary) is split over
/// the ranks, as a `ColumnParallelLinear` without `gather_output` leaves it:
/// rank r holds `logits_shard [*, V/ws]`, the ids of its part of the
/// vocabulary's `Partition` (uneven splits too); the full logits are never
/// gathered. `target [*]` holds ids in `[0, V)` (or
/// `ignore_index`), the same on every rank.
///
/// Forward: all-reduce (max) of the row maximum, then all-reduce (sum) of
/// the target logit and of the sum of exponentials; backward: softmax minus
/// the (smoothed) one-hot, local, no communication. Equals
/// `torch::nn::functional::cross_entropy` on the full logits, forward and
/// backward; computed in float32 at least (bfloat16 logits are widened).
at::Tensor vocab_parallel_cross_entropy(
    const at::Tensor& logits_shard,
    const at::Tensor& target,
    const VocabParallelCrossEntropyOptions& options = {});

} // namespace torchtp
