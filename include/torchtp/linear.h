#pragma once

#include "torchtp/group.h"
#include "torchtp/partition.h"
#include "torchtp/sharding.h"

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <ostream>

namespace torchtp {

/// Options of `ColumnParallelLinear`.
///
/// Example:
/// ```
///   torchtp::ColumnParallelLinear fc1(
///       torchtp::ColumnParallelLinearOptions(1024,
///       4096).gather_output(false));
/// ```
struct ColumnParallelLinearOptions {
  ColumnParallelLinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}

  /// Size of each input sample (not split).
  TORCH_ARG(int64_t, in_features);
  /// Size of each output sample; split over the ranks of the group.
  TORCH_ARG(int64_t, out_features);
  /// Learn an additive bias (sharded like the output).
  TORCH_ARG(bool, bias) = true;
  /// All-gather the output so every rank holds `[*, out_features]`; false
  /// (Megatron's default) leaves `[*, out_features / world_size]`, ready for a
  /// `RowParallelLinear` with `input_is_parallel(true)`.
  TORCH_ARG(bool, gather_output) = false;
  /// Leave the bias out of `forward()` so the caller can fuse it into the next
  /// op; the bias stays a parameter (`->bias`, this rank's shard).
  TORCH_ARG(bool, skip_bias_add) = false;
  /// The output is this many equal blocks (3 for a fused Q, K, V projection,
  /// 2 for a fused gate and up projection), each split over the ranks: rank r
  /// holds its part of every block, so it holds whole heads of Q, K and V.
  /// The full weight is the usual `[Q; K; V]` stack at every world size.
  TORCH_ARG(int64_t, segments) = 1;
  /// Allow an output size (per segment) that does not divide by the world
  /// size: the first `units % world_size` ranks hold one more unit (see
  /// `Partition`), every segment split the same way. False: such a size
  /// raises a `c10::Error`.
  TORCH_ARG(bool, uneven) = false;
  /// Output features move between ranks in blocks of this many (a head's
  /// width, so that every rank holds whole heads).
  TORCH_ARG(int64_t, split_unit) = 1;
  /// Grouped-query attention's fused projection (with `segments(3)` and
  /// `split_unit` the head width): the output is `[Q; K; V]` with this many
  /// key/value heads in K and in V, the query heads the rest; 0: equal
  /// segments. The query heads split over the ranks (unevenly with
  /// `uneven`) and each rank holds the key/value heads its query heads read
  /// (see `ShardSpec::kv_heads`): a head held by several ranks gets the sum
  /// of their weight gradients on each of them. Not with `gather_output`.
  TORCH_ARG(int64_t, kv_heads) = 0;
  /// Ranks to split over; default: the group of `init_from_env()`.
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  /// Parameter dtype; default: torch's default dtype.
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
};

/// Options of `RowParallelLinear`.
///
/// Example:
/// ```
///   torchtp::RowParallelLinear fc2(
///       torchtp::RowParallelLinearOptions(4096,
///       1024).input_is_parallel(true));
/// ```
struct RowParallelLinearOptions {
  RowParallelLinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}

  /// Size of each input sample; split over the ranks of the group.
  TORCH_ARG(int64_t, in_features);
  /// Size of each output sample (not split).
  TORCH_ARG(int64_t, out_features);
  /// Learn an additive bias: full on every rank, added once after the
  /// all-reduce, so its gradient is the full one on every rank.
  TORCH_ARG(bool, bias) = true;
  /// The input is already split: `[*, in_features / world_size]`, as a
  /// `ColumnParallelLinear` without `gather_output` produces. False: the input
  /// is `[*, in_features]` and this layer keeps its own chunk.
  TORCH_ARG(bool, input_is_parallel) = false;
  /// Leave the bias out of `forward()` (see ColumnParallelLinearOptions).
  TORCH_ARG(bool, skip_bias_add) = false;
  /// Allow an in_features that does not divide by the world size: the first
  /// `units % world_size` ranks hold one more unit (see `Partition`). False:
  /// such a size raises a `c10::Error`.
  TORCH_ARG(bool, uneven) = false;
  /// Input features move between ranks in blocks of this many (a head's
  /// width for an attention output projection).
  TORCH_ARG(int64_t, split_unit) = 1;
  /// All-reduce the partial products in `forward()`, then add the bias.
  /// False: `forward()` returns this rank's partial product `x_r W_r^T`,
  /// without the bias, and the caller reduces it and adds `bias` once after
  /// the reduction (adding it to every partial sum would count it
  /// world_size times). Sequence parallelism reduce-scatters it with
  /// `reduce_scatter_to_sequence_region` and adds the bias to the sequence
  /// shard through `copy_to_tp_region`, so the bias gradient, computed on
  /// the shard, is summed over the ranks.
  TORCH_ARG(bool, reduce_output) = true;
  /// Ranks to split over; default: the group of `init_from_env()`.
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  /// Parameter dtype; default: torch's default dtype.
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
};

/// `y = x W^T + b` with W's rows (the output features) split over the ranks:
/// rank r holds `weight [out/ws, in]` and `bias [out/ws]` (with `uneven`,
/// `output_partition()` gives each rank's share).
///
/// Input `[*, in]`, the same on every rank. Output `[*, out/ws]`, or
/// `[*, out]` with `gather_output`. Forward: no communication (all-gather with
/// `gather_output`); backward: the input gradient is all-reduced.
///
/// Initialisation gives this rank its rows of the weight `torch::nn::Linear`
/// would draw, bit for bit, drawing the full weight in blocks of rows and
/// keeping only its own (no rank holds the whole weight), and leaves the
/// global generator as the full draw would: the same seed gives the same
/// full weight at every world size. With `segments(k)` the rank's rows are its
/// part of each of the k blocks, in block order.
class ColumnParallelLinearImpl
    : public torch::nn::Cloneable<ColumnParallelLinearImpl>,
      public Sharded {
 public:
  ColumnParallelLinearImpl(int64_t in_features, int64_t out_features)
      : ColumnParallelLinearImpl(
            ColumnParallelLinearOptions(in_features, out_features)) {}
  explicit ColumnParallelLinearImpl(ColumnParallelLinearOptions options);

  void reset() override;
  /// Fills this rank's shard of the weight and bias `torch::nn::Linear`
  /// would draw from the global generator now (see above).
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// `[*, in]` -> `[*, out/ws]` (or `[*, out]` with gather_output).
  torch::Tensor forward(const torch::Tensor& input);

  /// Copies this rank's shard of a full `weight [out, in]` and `bias [out]`
  /// (pass an undefined bias when the layer has none).
  void load_full_weights(
      const torch::Tensor& weight, const torch::Tensor& bias = {});

  /// Replaces the weight by int8 rows with float32 scales (`weight_scale`)
  /// for serving; see quantize_int8 in quantize.h. Collective.
  void quantize_int8();

  /// weight, weight_scale and bias: dim 0, `segments` blocks.
  ShardSpec shard_spec(const std::string& name) const override;
  const Group& shard_group() const override {
    return *group_;
  }

  /// The split of each of the `segments` blocks of out_features (of all of
  /// out_features when segments is 1; of the query heads' block with
  /// `kv_heads`).
  const Partition& output_partition() const {
    return *partition_;
  }
  /// The weight and bias as `forward` uses them: the parameters, entering
  /// through a mapping whose backward sums the gradients of key/value heads
  /// over the ranks that share them (with `kv_heads`, in training). For
  /// callers that fuse this layer's product into their own (sequence
  /// parallelism).
  torch::Tensor forward_weight() const;
  torch::Tensor forward_bias() const;

  ColumnParallelLinearOptions options;
  /// `[out/ws, in]`
  torch::Tensor weight;
  /// `[out/ws]`, undefined without bias.
  torch::Tensor bias;
  /// `[out/ws]` float32 after quantize_int8, else undefined.
  torch::Tensor weight_scale;

 private:
  c10::optional<Group> group_;
  c10::optional<Partition> partition_;
};
TORCH_MODULE(ColumnParallelLinear);

/// `y = x W^T + b` with W's columns (the input features) split over the
/// ranks: rank r holds `weight [out, in/ws]` and the full `bias [out]` (with
/// `uneven`, `input_partition()` gives each rank's share).
///
/// Input `[*, in/ws]` with `input_is_parallel`, else `[*, in]`, which is
/// split here. Output `[*, out]`, the same on every rank. Forward: the
/// partial products are all-reduced, then the bias is added once; backward:
/// no communication (the scatter of a full input all-gathers its gradient).
/// With `reduce_output(false)` the output is this rank's partial product,
/// for the caller to reduce.
class RowParallelLinearImpl
    : public torch::nn::Cloneable<RowParallelLinearImpl>,
      public Sharded {
 public:
  RowParallelLinearImpl(int64_t in_features, int64_t out_features)
      : RowParallelLinearImpl(
            RowParallelLinearOptions(in_features, out_features)) {}
  explicit RowParallelLinearImpl(RowParallelLinearOptions options);

  void reset() override;
  /// Fills this rank's columns of the weight, and the bias, that
  /// `torch::nn::Linear` would draw from the global generator now, bit for
  /// bit: the full weight is drawn in blocks of rows, each narrowed to this
  /// rank's columns, and the generator ends as after the full draw.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// `[*, in/ws]` (or `[*, in]` without input_is_parallel) -> `[*, out]`
  /// (this rank's partial sum with `reduce_output(false)`).
  torch::Tensor forward(const torch::Tensor& input);

  /// Copies this rank's shard of a full `weight [out, in]` and the full
  /// `bias [out]` (undefined when the layer has none).
  void load_full_weights(
      const torch::Tensor& weight, const torch::Tensor& bias = {});

  /// Replaces the weight by int8 rows with float32 scales (`weight_scale`)
  /// for serving; see quantize_int8 in quantize.h. Collective.
  void quantize_int8();

  /// weight: dim 1; bias and weight_scale: replicated.
  ShardSpec shard_spec(const std::string& name) const override;
  const Group& shard_group() const override {
    return *group_;
  }

  /// The split of in_features.
  const Partition& input_partition() const {
    return *partition_;
  }

  RowParallelLinearOptions options;
  /// `[out, in/ws]`
  torch::Tensor weight;
  /// `[out]`, undefined without bias.
  torch::Tensor bias;
  /// `[out]` float32 after quantize_int8 (each whole row's scale), else
  /// undefined.
  torch::Tensor weight_scale;

 private:
  c10::optional<Group> group_;
  c10::optional<Partition> partition_;
};
TORCH_MODULE(RowParallelLinear);

} // namespace torchtp
