#pragma once

#include "torchtp/group.h"
#include "torchtp/kv_blocks.h"
#include "torchtp/partition.h"
#include "torchtp/transformer.h"

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace torchtp {

/// What a causal LM has seen while it generates: every layer's `KVCache`
/// (this rank's key/value heads), which cached positions are real tokens,
/// and each sequence's next position. Made by `CausalLM::make_cache`.
struct LMCache {
  LMCache() = default;
  /// Room for `capacity` positions in each of `layers` layers, keys and
  /// values stored in `kv_dtype` (none: the activations' dtype).
  LMCache(
      int64_t capacity,
      int64_t layers,
      c10::optional<torch::Dtype> kv_dtype = c10::nullopt)
      : layers(layers, KVCache(capacity, kv_dtype)), capacity_(capacity) {}

  std::vector<KVCache> layers;
  /// `[batch, length]` bool: false for padding.
  torch::Tensor key_mask;
  /// `[batch]` int64: the position the next real token of each sequence
  /// gets (its real tokens so far).
  torch::Tensor next_position;
  /// Positions filled (real or padding), at most `capacity()`.
  int64_t length() const {
    return layers.empty() ? key_mask.defined() ? key_mask.size(1) : 0
                          : layers.front().length;
  }
  int64_t capacity() const {
    return capacity_;
  }

 private:
  int64_t capacity_ = 0;
};

/// What generation, sampling and serving need of a decoder-only language
/// model split over a tensor-parallel group: every family (GPT-2, Llama,
/// Mistral, Qwen2: `GPT` with their options) implements it, so the code
/// above it never names a family.
class CausalLM {
 public:
  virtual ~CausalLM() = default;
  /// An empty cache holding up to `max_seq_len()` positions, its keys and
  /// values stored in `kv_dtype`: float32, bfloat16 (half the bytes a
  /// float32 or int8 model's cache takes, and half of what attention reads
  /// per token) or float64; none: the model's dtype (float32 for an int8
  /// model).
  virtual LMCache make_cache(
      c10::optional<torch::Dtype> kv_dtype = c10::nullopt) const = 0;
  /// Inference: this rank's logits `[batch, s, padded_vocab / ws]` (split as
  /// `vocab_partition()` says) for new ids `[batch, s]` that follow those
  /// in `cache`, which they join. `mask [batch, s]` (bool; default all
  /// true) marks real tokens: padding takes no position and is never
  /// attended to. `last_only`: the logits of the last column only,
  /// `[batch, 1, padded_vocab / ws]` (what generation samples from; the
  /// output layer then runs on one row per sequence, not on the whole
  /// prompt). Collective over `group()`.
  virtual torch::Tensor forward_cached(
      const torch::Tensor& ids,
      LMCache& cache,
      const torch::Tensor& mask = {},
      bool last_only = false) = 0;
  /// An empty pool of `num_blocks` blocks of `block_size` positions for
  /// `forward_paged` (this rank's key/value heads), in `kv_dtype` as
  /// `make_cache` says.
  virtual KVBlocks make_kv_blocks(
      int64_t num_blocks,
      int64_t block_size,
      c10::optional<torch::Dtype> kv_dtype = c10::nullopt) const = 0;
  /// Inference over many sequences at once (continuous batching): each
  /// token of `batch` attends to its own sequence's earlier positions in
  /// `cache` (written by earlier steps) and its own; its key and value are
  /// written at its slot. Returns this rank's logits `[sequences,
  /// padded_vocab / ws]` of the tokens `batch.logits_rows` names. A
  /// sequence's result does not depend on the others in the batch.
  /// Collective over `group()`.
  virtual torch::Tensor forward_paged(
      const PagedBatch& batch,
      KVBlocks& cache) = 0;
  /// How the (padded) vocabulary of the logits is split over the ranks.
  virtual const Partition& vocab_partition() const = 0;
  /// Ids below this are real tokens; the rest of the logits are padding.
  virtual int64_t vocab_size() const = 0;
  /// The context: positions a cache holds.
  virtual int64_t max_seq_len() const = 0;
  virtual const Group& group() const = 0;
  /// The module itself (to switch training off while generating).
  virtual torch::nn::Module& module() = 0;
};

} // namespace torchtp
