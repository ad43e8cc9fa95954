#pragma once

// Attention of many sequences' new tokens over keys and values kept in
// fixed-size blocks of one pool (vLLM's paged attention, on the CPU): each
// query row finds its sequence's cached positions through that sequence's
// row of a block table, so sequences of any length share one pool without
// being copied into a padded batch. Each (row, head) is computed alone and
// in one fixed order, so a sequence's result does not depend on which
// others share the step. The same kernel reads a contiguous cache
// (`KVCache`, `[batch, kv_heads, capacity, head_dim]`) as one block per
// sequence (the strides below), for every step of `generate`. Compiled
// without LibTorch's headers.

#include <cstdint>

namespace torchtp::detail {

struct PagedAttentionShape {
  /// Query rows (new tokens of every sequence in the step).
  int64_t tokens;
  /// Query heads and key/value heads on this rank.
  int64_t heads;
  int64_t kv_heads;
  int64_t head_dim;
  /// Positions per block, and columns of the block table.
  int64_t block_size;
  int64_t max_blocks;
  /// Elements between consecutive slots, and between key/value heads, in
  /// the pools. 0: a pool `[slots, kv_heads, head_dim]` (kv_heads *
  /// head_dim and head_dim). A contiguous cache `[batch, kv_heads,
  /// capacity, head_dim]` is head_dim and capacity * head_dim, with blocks
  /// of `capacity` slots and sequence b's table `{b * kv_heads}`.
  int64_t slot_stride = 0;
  int64_t head_stride = 0;
  /// Columns of `key_mask` (when one is given).
  int64_t key_mask_columns = 0;
};

/// `out [tokens, heads, head_dim]` = softmax(q k^T * scale) v, where row t
/// (of sequence `token_seq[t]`, at position `token_pos[t]`) sees that
/// sequence's positions 0 .. token_pos[t]: position j's key and value are at
/// slot `block_tables[seq][j / block_size] * block_size + j % block_size`
/// of `k_pool` / `v_pool` `[slots, kv_heads, head_dim]` (already written,
/// its own included). Query head h reads key/value head `kv_of_head[h]`.
/// `key_mask` (may be null; `[sequences, key_mask_columns]`) hides the
/// positions j < token_pos[t] it marks false (left padding); a row always
/// sees its own position. `T` (queries, outputs, sums) is float or double;
/// the pools hold `S`: `T`, or bfloat16 bits (`uint16_t`) beside float
/// queries, widened as they are read.
template <typename T, typename S = T>
void paged_attention(
    const T* q,
    const S* k_pool,
    const S* v_pool,
    const int64_t* kv_of_head,
    const int64_t* token_seq,
    const int64_t* token_pos,
    const int64_t* block_tables,
    double scale,
    T* out,
    const PagedAttentionShape& shape,
    const bool* key_mask = nullptr);

} // namespace torchtp::detail
