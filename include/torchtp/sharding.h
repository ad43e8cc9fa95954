#pragma once

#include "torchtp/group.h"
#include "torchtp/partition.h"

#include <torch/nn/module.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace torchtp {

/// How one parameter is split over a tensor-parallel group: along `dim`, with
/// that dim made of `segments` equal blocks each split by the same
/// `Partition` (a fused Q, K, V weight has 3); or replicated, every rank
/// holding it whole. Checkpoints use it to save, reshard and load.
struct ShardSpec {
  /// The split dim; -1 when replicated (see `replicated()`).
  int64_t dim = -1;
  int64_t segments = 1;
  /// The full size of the split dim (all segments); -1 when not known, in
  /// which case the split must be even (the full size is the local one
  /// times the group size).
  int64_t full_size = -1;
  /// Each segment is split by Partition's uneven rule, in units of `unit`
  /// indices (see `Partition`).
  bool uneven = false;
  int64_t unit = 1;
  /// Grouped-query attention's fused `[Q; K; V]` (with `segments` 3 and
  /// `unit` the head width): the number of key/value heads; the query heads
  /// are the rest of the dim. 0: equal segments. The query heads split by
  /// `Partition` (in units of one head); each rank holds the key/value
  /// heads its query heads read (`kv_heads_read`), so when there are fewer
  /// of them than ranks, or an uneven split cuts a group, a head is held by
  /// several ranks.
  int64_t kv_heads = 0;

  /// Every rank holds the whole tensor.
  static ShardSpec replicated() {
    return ShardSpec{};
  }
  bool is_replicated() const {
    return dim < 0;
  }
  /// The split of one segment of `segment_size` indices over `parts` ranks,
  /// seen from `rank`.
  Partition partition(
      int64_t segment_size,
      int64_t parts,
      int64_t rank,
      const std::string& what) const {
    return Partition(segment_size, parts, rank, what, uneven, unit);
  }
};

/// The key/value heads `[first, last)` that query heads `[q_first, q_last)`
/// read when each key/value head serves `group_size` consecutive query
/// heads (grouped-query attention): the one home of the rule.
std::pair<int64_t, int64_t> kv_heads_read(
    int64_t q_first, int64_t q_last, int64_t group_size);

/// Implemented by every torchtp module that holds split parameters.
class Sharded {
 public:
  virtual ~Sharded() = default;
  /// The split of the parameter registered as `name` on this module.
  virtual ShardSpec shard_spec(const std::string& name) const = 0;
  /// The group the parameters are split over.
  virtual const Group& shard_group() const = 0;
};

/// The full shape of a parameter whose shard on this rank has shape `local`.
std::vector<int64_t> full_shape(
    at::IntArrayRef local, const ShardSpec& spec, const Group& group);

// ---------------------------------------------------------------------------
// The fused-segment layout: the one home of how a split dim made of
// `segments` blocks, each split by a Partition `part`, is laid out. With
// blocks s0 s1 .. and ranks r0 r1 .., along the split dim:
//
//   full      (block-major)  [s0: r0 r1 .., s1: r0 r1 .., ..]
//   shard of r               [s0: r, s1: r, ..]
//   gathered  (rank-major)   [r0: s0 s1 .., r1: s0 s1 .., ..]
//
// "gathered" is what an all-gather of every rank's shard along the dim
// holds (rank r's shard has `part.scaled(segments).size(r)` indices).
// Everything below is computed from the per-rank sizes and offsets of
// `part`, so it holds for uneven splits too.

/// `length` consecutive indices along the split dim, from index `from` of
/// one tensor to index `to` of another.
struct SegmentRange {
  int64_t from;
  int64_t to;
  int64_t length;
};

/// Where shard `rank` comes from: one range per segment, `from` an index of
/// the full dim, `to` an index of the shard.
std::vector<SegmentRange> shard_ranges(
    const Partition& part, int64_t segments, int64_t rank);

/// Where shard `rank` of `parts` comes from under `spec`, for a split dim
/// of `full_size` indices (all segments): one range per segment, `from` an
/// index of the full dim, `to` an index of the shard. `what` names the
/// tensor in the error raised when the split does not divide.
std::vector<SegmentRange> shard_ranges(
    const ShardSpec& spec,
    int64_t full_size,
    int64_t parts,
    int64_t rank,
    const std::string& what);

/// The parts of `shard_ranges(spec, ..)` of shard `rank` that no lower
/// rank holds too (`to` still an index of shard `rank`): over all ranks
/// they cover the full dim once, so they say which shard each index is
/// taken from when shards are put together. The same as `shard_ranges`
/// unless `spec.kv_heads` makes ranks share heads.
std::vector<SegmentRange> owned_ranges(
    const ShardSpec& spec,
    int64_t full_size,
    int64_t parts,
    int64_t rank,
    const std::string& what);

/// Where the shard of `now.rank()` under `now` overlaps shard `rank` under
/// `then`, two splits of the same segments: `from` an index of shard `rank`
/// of `then`, `to` an index of the new shard. Empty when they do not
/// overlap. This is what resharding a checkpoint copies.
std::vector<SegmentRange> overlap_ranges(
    const Partition& then,
    int64_t rank,
    const Partition& now,
    int64_t segments);

/// This rank's (`part.rank()`'s) shard of `full` along `dim`: its part of
/// each of the `segments` blocks, blocks kept in order. A view when
/// `segments` is 1.
at::Tensor shard_of(
    const at::Tensor& full,
    int64_t dim,
    int64_t segments,
    const Partition& part);

/// Opposite of `shard_of`: the full tensor from `gathered`, every rank's
/// shard concatenated in rank order along `dim`.
at::Tensor full_from_gathered(
    const at::Tensor& gathered,
    int64_t dim,
    int64_t segments,
    const Partition& part);

/// This rank's shard of the full tensor `full` under `spec` over `group`
/// (see above); `full` itself when replicated. `what` names the tensor in the
/// error raised when a block does not divide.
at::Tensor shard_of(
    const at::Tensor& full,
    const ShardSpec& spec,
    const Group& group,
    const std::string& what);

/// Copies this rank's shard of the full tensor `full` into `shard`, a tensor
/// split by `spec` over `group`: the one way a full weight is loaded, by the
/// layers' `load_full_weights` and by `load_full_state`. Raises a
/// `c10::Error` "<component>: expected full <what> of shape .. but got .."
/// when `full` is undefined or does not have the full shape of `shard`.
void copy_shard_of(
    at::Tensor& shard,
    const at::Tensor& full,
    const ShardSpec& spec,
    const Group& group,
    const std::string& component,
    const std::string& what);

/// Every parameter of `model` (named as `named_parameters()` names them) with
/// its split; parameters of ordinary torch modules are replicated.
std::map<std::string, ShardSpec> shard_specs(const torch::nn::Module& model);

/// The tensor-parallel group of `model`'s split parameters; the default group
/// when it has none. Raises `c10::Error` when they use different groups.
Group shard_group(const torch::nn::Module& model);

} // namespace torchtp
