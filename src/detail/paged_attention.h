#pragma once

// Attention of many sequences' new tokens over keys and values kept in
// fixed-size blocks of one pool (vLLM's paged attention, on the CPU): each
// query row finds its sequence's cached positions through that sequence's
// row of a block table, so sequences of any length share one pool without
// being copied into a padded batch. Each (row, head) is computed alone and
// in one fixed order, so a sequence's result does not depend on which
// others share the step. Compiled without LibTorch's headers.

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
};

/// `out [tokens, heads, head_dim]` = softmax(q k^T * scale) v, where row t
/// (of sequence `token_seq[t]`, at position `token_pos[t]`) sees that
/// sequence's positions 0 .. token_pos[t]: position j's key and value are at
/// slot `block_tables[seq][j / block_size] * block_size + j % block_size`
/// of `k_pool` / `v_pool` `[slots, kv_heads, head_dim]` (already written,
/// its own included). Query head h reads key/value head `kv_of_head[h]`.
/// `T` is float or double; sums in `T`.
template <typename T>
void paged_attention(
    const T* q,
    const T* k_pool,
    const T* v_pool,
    const int64_t* kv_of_head,
    const int64_t* token_seq,
    const int64_t* token_pos,
    const int64_t* block_tables,
    double scale,
    T* out,
    const PagedAttentionShape& shape);

} // namespace torchtp::detail
