#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace torchtp {

/// Every layer's keys and values of many sequences, in fixed-size blocks of
/// one pool per rank (vLLM's paged KV cache): a sequence holds whichever
/// blocks are free, listed in its row of a block table, so long and short
/// sequences share the memory without fragmenting it. Each rank holds its
/// own key/value heads. Made by `CausalLM::make_kv_blocks`; which block
/// belongs to which sequence is the caller's bookkeeping (the serving
/// `Engine` does it).
struct KVBlocks {
  /// Positions per block.
  int64_t block_size = 0;
  int64_t num_blocks = 0;
  struct Layer {
    /// `[num_blocks, block_size, local_kv_heads, head_dim]`; keys after
    /// rotary positions are applied.
    torch::Tensor k, v;
  };
  std::vector<Layer> layers;
  /// Bytes of keys and values on this rank.
  int64_t bytes() const {
    int64_t n = 0;
    for (const auto& layer : layers) {
      n += layer.k.nbytes() + layer.v.nbytes();
    }
    return n;
  }
};

/// One step over many sequences, their new tokens flattened into one row
/// of `T` tokens: a sequence may bring its whole prompt (prefill) or one
/// token (decode), side by side. Every tensor is int64.
struct PagedBatch {
  /// `[T]` the new token ids.
  torch::Tensor ids;
  /// `[T]` each token's position in its sequence.
  torch::Tensor positions;
  /// `[T]` each token's sequence: its row of `block_tables`.
  torch::Tensor token_seq;
  /// `[T]` where each token's key and value go: block * block_size + offset.
  torch::Tensor slots;
  /// `[sequences, max_blocks]` each sequence's blocks in order (unused
  /// entries are never read).
  torch::Tensor block_tables;
  /// `[sequences]` which of the `T` tokens' logits to return (each
  /// sequence's last).
  torch::Tensor logits_rows;
};

} // namespace torchtp
