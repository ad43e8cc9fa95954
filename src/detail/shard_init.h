#pragma once

#include "torchtp/group.h"
#include "torchtp/sharding.h"

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <utility>

namespace torchtp::detail {

// Initialisation that gives each rank only its slice, with the values the
// full draw from the global generator would give: the same seed gives the
// same full model at every tensor-parallel degree, and no rank ever holds a
// whole layer.

/// Largest block, in bytes, that `draw_shard` draws at once (4 MiB unless
/// set); a block is never smaller than one row.
int64_t init_block_bytes();
/// Sets `init_block_bytes()` (positive) and returns the previous value;
/// tests make blocks smaller than their layers this way.
int64_t set_init_block_bytes(int64_t bytes);

/// While one is alive on this thread, `draw_shard` (and so every torchtp
/// layer's `reset_parameters`) leaves shards as they are and the global
/// generator untouched: for loaders, which overwrite every parameter next,
/// so that building a large model does not first draw all of its weights
/// (measured: a Qwen2.5-0.5B shape loaded at TP=2 in 25 s with the draws,
/// 4.5 s without).
class SkipInitGuard {
 public:
  SkipInitGuard();
  ~SkipInitGuard();
  SkipInitGuard(const SkipInitGuard&) = delete;
  SkipInitGuard& operator=(const SkipInitGuard&) = delete;

 private:
  bool previous_;
};

/// Fills `shard`, this rank's shard under `spec` over `group` of a full
/// tensor of shape `full_sizes`, with the values `draw(full)` would give a
/// full tensor of dtype `draw_dtype`, and leaves the global generator as
/// that draw would, without holding the full tensor: the full tensor is
/// drawn in consecutive blocks of whole rows (dim 0), in order, into a
/// scratch block of at most `init_block_bytes()` (or one row), and the part
/// of each block this rank owns is copied (rounded to `shard`'s dtype).
///
/// This equals one full draw only for a `draw` whose values at an element
/// depend on where it is in the draw's stream of random numbers, not on the
/// tensor's size, for tensors of `element_multiple` elements and more: a
/// block's elements are a multiple of `element_multiple`, and a last block
/// under `element_multiple` elements joins the one before (normal_ needs 16,
/// elementwise draws such as uniform_ 1).
void draw_shard(
    torch::Tensor& shard,
    at::IntArrayRef full_sizes,
    const ShardSpec& spec,
    const Group& group,
    c10::ScalarType draw_dtype,
    int64_t element_multiple,
    const std::function<void(torch::Tensor&)>& draw);

/// The full weight `[out, in]` and bias `[out]` (undefined without bias) that
/// `torch::nn::Linear(in, out)` would draw from the global generator now.
/// Reduced-precision dtypes are drawn in float32 and rounded, as
/// `torch::nn::Linear(...)->to(dtype)` would give. The layers draw only
/// their slice of these (`linear_init_shard`), with the same values.
std::pair<torch::Tensor, torch::Tensor> linear_init(
    int64_t in_features, int64_t out_features, bool bias, torch::Dtype dtype);

/// Fills `weight` and `bias` (undefined: no bias), the shards under
/// `weight_spec` and `bias_spec` over `group` of a `torch::nn::Linear`'s
/// weight and bias, with their slices of `linear_init`'s draw.
void linear_init_shard(
    torch::Tensor& weight,
    torch::Tensor& bias,
    const ShardSpec& weight_spec,
    const ShardSpec& bias_spec,
    const Group& group);

} // namespace torchtp::detail
