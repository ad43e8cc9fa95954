#pragma once

#include "torchtp/group.h"
#include "torchtp/partition.h"

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>

namespace torchtp {

/// The `k` largest logits of every row, over the whole vocabulary.
struct TopLogits {
  /// [*, k], largest first; float32 (float64 for float64 logits). Rows with
  /// fewer than `k` real entries end in -inf.
  at::Tensor values;
  /// [*, k] vocabulary ids of `values` (int64; -1 where the value is -inf:
  /// padding, or a token that cannot be chosen). Equal values are ordered by
  /// id.
  at::Tensor ids;
};

/// The `k` largest logits of every row of logits split along the last dim
/// over `group` (as a ColumnParallelLinear without gather_output leaves
/// them: rank r holds the ids of its part of `vocab_partition`, by default
/// learnt from every rank's shard width with one small all-gather). Each
/// rank finds its own `k` best and only those are exchanged (one all-gather
/// of `2 k` values per row), never the vocabulary. Ids at or past
/// `vocab_size` are padding and left out (0: every id is real). The same
/// result on every rank.
TopLogits vocab_parallel_topk(
    const at::Tensor& logits_shard,
    int64_t k,
    int64_t vocab_size = 0,
    const c10::optional<Group>& group = c10::nullopt,
    const c10::optional<Partition>& vocab_partition = c10::nullopt);

/// How `sample_next_token` picks a token.
struct SamplingOptions {
  /// The largest logit (ties: the lowest id); temperature, top_k and top_p
  /// are then ignored.
  TORCH_ARG(bool, greedy) = false;
  /// Logits are divided by it; must be positive unless `greedy`.
  TORCH_ARG(double, temperature) = 1.0;
  /// Sample among the `top_k` largest logits only (0: no limit).
  TORCH_ARG(int64_t, top_k) = 0;
  /// Then among the fewest most likely tokens whose probability reaches
  /// `top_p` (nucleus sampling; 1: no limit). With `top_k`, the
  /// probabilities are those renormalised over the top-k tokens, as Hugging
  /// Face's `generate` computes them.
  TORCH_ARG(double, top_p) = 1.0;
  /// The real vocabulary when the logits are padded: ids at or past it are
  /// never chosen. 0: every id is real.
  TORCH_ARG(int64_t, vocab_size) = 0;
  /// Ranks holding the vocabulary shards; default: the group of
  /// `init_from_env()`.
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  /// How the vocabulary is split (the output layer's partition, even or
  /// not); default: learnt from every rank's shard width, one small
  /// all-gather per call.
  TORCH_ARG(c10::optional<Partition>, vocab_partition) = c10::nullopt;
};

/// The next token of every row of vocabulary-parallel logits `[*, V/ws]`:
/// int64 ids `[*]`, the same on every rank, and the same at every
/// tensor-parallel degree for the same logits and generator state.
///
/// One uniform number per row is drawn from `generator`, which must be in
/// the same state on every rank (seed it the same everywhere), and inverted
/// through the cumulative distribution of the allowed tokens in order of
/// decreasing probability (ties by id) or, when every token is allowed, in
/// id order. Nothing the size of the vocabulary is exchanged: greedy and
/// top-k exchange each rank's k best (id, logit) pairs; top-p alone first
/// sums the softmax denominator over the ranks (two all-reduces of one value
/// per row), then gathers ever more of the best candidates until they hold
/// `top_p` of the mass (usually once); plain temperature sampling finds the
/// rank whose ids hold the drawn point from every rank's total mass.
at::Tensor sample_next_token(
    const at::Tensor& logits_shard,
    at::Generator generator,
    const SamplingOptions& options = {});

} // namespace torchtp
