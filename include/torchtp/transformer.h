#pragma once

#include "torchtp/group.h"
#include "torchtp/kv_blocks.h"
#include "torchtp/linear.h"
#include "torchtp/norm.h"
#include "torchtp/random.h"
#include "torchtp/rotary.h"

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>

namespace torchtp {

/// The MLP's nonlinearity.
enum class Activation {
  /// The exact GELU, `x * Phi(x)` (torch's default).
  gelu,
  /// GELU's tanh approximation (GPT-2's "gelu_new").
  gelu_tanh,
  /// `x * sigmoid(x)` (Llama's SwiGLU, with `gated`).
  silu,
};

/// Options of `ParallelMLP`.
struct ParallelMLPOptions {
  ParallelMLPOptions(int64_t d_model, int64_t ffn_hidden)
      : d_model_(d_model), ffn_hidden_(ffn_hidden) {}

  /// Width of the input and output (not split).
  TORCH_ARG(int64_t, d_model);
  /// Width of the hidden layer; split over the ranks.
  TORCH_ARG(int64_t, ffn_hidden);
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(Activation, activation) = Activation::gelu;
  /// The gated form `fc2(act(gate(x)) * up(x))` (SwiGLU with `silu`):
  /// `fc1` is then one column layer of two segments, `[gate; up]`, each
  /// `ffn_hidden` wide and split the same way.
  TORCH_ARG(bool, gated) = false;
  /// Allow an ffn_hidden that does not divide by the world size (see
  /// `Partition`: the first `ffn_hidden % ws` ranks hold one more unit).
  TORCH_ARG(bool, uneven) = false;
  /// Sequence parallelism: `forward` takes and returns this rank's part of
  /// the sequence, `[batch, seq / ws, d_model]` (see `TransformerLayer`;
  /// with `uneven`, uneven parts are allowed).
  TORCH_ARG(bool, sequence_parallel) = false;
  /// Ranks to split over; default: the group of `init_from_env()`.
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
};

/// The transformer feed-forward block: `fc2(act(fc1(x)))` with `fc1` a
/// `ColumnParallelLinear` (d_model -> ffn_hidden/ws, no gather) and `fc2` a
/// `RowParallelLinear` (ffn_hidden/ws -> d_model); with `gated`,
/// `fc2(act(gate) * up)` for `[gate; up] = fc1(x)`. Input and output
/// `[*, d_model]`, the same on every rank; one all-reduce forward, one
/// backward.
///
/// With `sequence_parallel`: input and output `[batch, local_seq, d_model]`,
/// this rank's part of the sequence; forward all-gathers the sequence before
/// `fc1` and reduce-scatters `fc2`'s partial sums (then adds its bias),
/// backward the reverse: the same bytes as the all-reduce, but nothing
/// outside the two projections is held whole.
class ParallelMLPImpl : public torch::nn::Cloneable<ParallelMLPImpl> {
 public:
  explicit ParallelMLPImpl(ParallelMLPOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// `seq_len` (sequence parallelism only): the full sequence length, of
  /// which `x` holds this rank's part; -1: `x.size(1)` times the world size
  /// (even splits only: with `uneven` the length must be given).
  torch::Tensor forward(const torch::Tensor& x, int64_t seq_len = -1);
  /// `[*, d_model]`, the same on every rank, to `[*, d_model]`, the same on
  /// every rank, with or without `sequence_parallel` (for inference on
  /// whole sequences, such as decoding with a cache).
  torch::Tensor forward_replicated(const torch::Tensor& x);

  ParallelMLPOptions options;
  ColumnParallelLinear fc1{nullptr};
  RowParallelLinear fc2{nullptr};

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(int64_t{-1})})

 private:
  // fc2(act(up)), or fc2(act(gate) * up) when gated, for fc1's output.
  torch::Tensor down(const torch::Tensor& up);
};
TORCH_MODULE(ParallelMLP);

/// The keys and values one `ParallelSelfAttention` has seen, for decoding a
/// token at a time: this rank's heads only, in buffers of `capacity`
/// positions allocated on first use.
struct KVCache {
  explicit KVCache(
      int64_t capacity = 0, c10::optional<torch::Dtype> dtype = c10::nullopt)
      : capacity(capacity), dtype(dtype) {}
  int64_t capacity;
  /// What the keys and values are stored in (float32, float64 or
  /// bfloat16); none: the new keys' dtype. Each key and value is rounded to
  /// it once, when stored, and attention reads them as stored.
  c10::optional<torch::Dtype> dtype;
  /// Positions filled so far.
  int64_t length = 0;
  /// `[batch, local_kv_heads, capacity, head_dim]`; keys after rotary
  /// positions are applied.
  torch::Tensor k, v;
};

/// Options of `ParallelSelfAttention`.
struct ParallelSelfAttentionOptions {
  ParallelSelfAttentionOptions(int64_t d_model, int64_t num_heads)
      : d_model_(d_model), num_heads_(num_heads) {}

  TORCH_ARG(int64_t, d_model);
  /// Number of (query) heads; split over the ranks (each rank holds whole
  /// heads).
  TORCH_ARG(int64_t, num_heads);
  /// Key/value heads (grouped-query attention: each serves num_heads /
  /// num_kv_heads consecutive query heads; 1 is multi-query attention).
  /// 0: num_heads. Each rank holds the key/value heads its query heads
  /// read, so with fewer of them than ranks a head is held, and its
  /// gradient summed, on several ranks.
  TORCH_ARG(int64_t, num_kv_heads) = 0;
  /// Width of a head; 0: d_model / num_heads.
  TORCH_ARG(int64_t, head_dim) = 0;
  /// Mask future positions (a decoder).
  TORCH_ARG(bool, causal) = true;
  /// Biases of the Q, K, V and output projections, unless set below.
  TORCH_ARG(bool, bias) = true;
  /// Bias of the Q, K, V projection (Qwen2 has one and no output bias).
  TORCH_ARG(c10::optional<bool>, qkv_bias) = c10::nullopt;
  /// Bias of the output projection.
  TORCH_ARG(c10::optional<bool>, proj_bias) = c10::nullopt;
  /// Rotary position embeddings applied to the queries and keys of each
  /// head (Hugging Face's "rotate half" convention); none when unset.
  TORCH_ARG(c10::optional<RotaryOptions>, rotary) = c10::nullopt;
  /// Dropout on the attention probabilities (a sharded region: each rank
  /// draws from its own stream).
  TORCH_ARG(double, attention_dropout) = 0.0;
  /// Allow a number of heads that does not divide by the world size: the
  /// first `num_heads % ws` ranks hold one more whole head (12 heads over 5
  /// ranks: 3, 3, 2, 2, 2). Every rank needs at least one head.
  TORCH_ARG(bool, uneven) = false;
  /// Streams for dropout; default: a tracker seeded with 0.
  TORCH_ARG(std::shared_ptr<RngTracker>, rng) = nullptr;
  /// Sequence parallelism: `forward` takes and returns this rank's part of
  /// the sequence, `[batch, seq / ws, d_model]` (see `TransformerLayer`;
  /// with `uneven`, uneven parts are allowed).
  TORCH_ARG(bool, sequence_parallel) = false;
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
};

/// Multi-head self-attention with the heads split over the ranks. The fused
/// Q, K, V projection is a `ColumnParallelLinear` with `segments(3)`: its
/// full weight is the `[Wq; Wk; Wv]` stack (`[(heads + 2 kv_heads)
/// head_dim, d_model]`) at every world size, and rank r holds whole heads
/// of each: its query heads and the key/value heads they read (see
/// `num_kv_heads`). The output projection
/// is a `RowParallelLinear`. Input and output `[batch, seq, d_model]`, the
/// same on every rank; one all-reduce forward, one backward.
///
/// With `sequence_parallel`: input and output `[batch, local_seq,
/// d_model]`, this rank's part of the sequence; forward all-gathers the
/// sequence before the Q, K, V projection and reduce-scatters the output
/// projection's partial sums (then adds its bias); backward the reverse.
class ParallelSelfAttentionImpl
    : public torch::nn::Cloneable<ParallelSelfAttentionImpl> {
 public:
  explicit ParallelSelfAttentionImpl(ParallelSelfAttentionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  /// `seq_len` (sequence parallelism only): the full sequence length, of
  /// which `x` holds this rank's part; -1: `x.size(1)` times the world size
  /// (even splits only: with `uneven` the length must be given).
  torch::Tensor forward(const torch::Tensor& x, int64_t seq_len = -1);
  /// Inference on new positions `x [batch, s, d_model]` after the ones held
  /// in `cache`, which they join. `key_mask [batch, cache.length + s]`
  /// (bool) says which positions, old and new, are real tokens: padding is
  /// never attended to. `positions [batch, s]` (int64) are the rotary
  /// positions of the new tokens (default: the cache's slots). Causal
  /// attention (the option is ignored), no dropout. Equals `forward` on the
  /// whole sequence, for the new rows.
  torch::Tensor forward_cached(
      const torch::Tensor& x,
      KVCache& cache,
      const torch::Tensor& key_mask,
      const torch::Tensor& positions = {});
  /// Inference over many sequences' new tokens `x [1, T, d_model]`,
  /// flattened as `batch` lays them out: their keys and values are written
  /// into `cache` at their slots, then each token attends to its own
  /// sequence's positions up to its own (see `PagedBatch`). No dropout.
  torch::Tensor forward_paged(
      const torch::Tensor& x,
      KVBlocks::Layer& cache,
      const PagedBatch& batch);
  /// Keys and values of `num_blocks` blocks of `block_size` positions for
  /// `forward_paged`, in `dtype`.
  KVBlocks::Layer make_kv_blocks(
      int64_t num_blocks,
      int64_t block_size,
      torch::Dtype dtype) const;

  /// Query heads on this rank.
  int64_t local_heads() const {
    return local_heads_;
  }
  /// Key/value heads on this rank.
  int64_t local_kv_heads() const {
    return local_kv_heads_;
  }
  int64_t head_dim() const {
    return head_dim_;
  }

  ParallelSelfAttentionOptions options;
  ColumnParallelLinear qkv{nullptr};
  RowParallelLinear proj{nullptr};

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(int64_t{-1})})

 private:
  void check_input(const torch::Tensor& x) const;
  // Q [batch, local_heads, seq, head_dim] and K, V [batch, local_kv_heads,
  // seq, head_dim] from qkv's output, rotated at `positions` with rotary.
  std::array<torch::Tensor, 3> split_heads(
      const torch::Tensor& projected, const torch::Tensor& positions);
  // Attention of q over k, v where `allowed` [.., s_q, s_k] is true, then
  // the output projection.
  torch::Tensor attend(
      const torch::Tensor& q,
      const torch::Tensor& k,
      const torch::Tensor& v,
      const torch::Tensor& allowed,
      bool with_dropout);

  int64_t local_heads_ = 0;
  int64_t local_kv_heads_ = 0;
  int64_t head_dim_ = 0;
  // For each local query head, its key/value head among this rank's;
  // undefined when they are one to one.
  torch::Tensor kv_of_head_;
  // Rotary inverse frequencies (float64); undefined without rotary.
  torch::Tensor inverse_frequencies_;
  std::shared_ptr<RngTracker> rng_;
};
TORCH_MODULE(ParallelSelfAttention);

/// Options of `TransformerLayer`.
struct TransformerLayerOptions {
  TransformerLayerOptions(int64_t d_model, int64_t num_heads)
      : d_model_(d_model), num_heads_(num_heads) {}

  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_heads);
  /// Hidden width of the MLP; 0: 4 x d_model.
  TORCH_ARG(int64_t, ffn_hidden) = 0;
  TORCH_ARG(bool, causal) = true;
  /// Biases of every projection, unless `qkv_bias` / `proj_bias` say
  /// otherwise for the attention's.
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(c10::optional<bool>, qkv_bias) = c10::nullopt;
  TORCH_ARG(c10::optional<bool>, proj_bias) = c10::nullopt;
  /// Grouped-query attention and head width (see
  /// ParallelSelfAttentionOptions); 0: num_heads, d_model / num_heads.
  TORCH_ARG(int64_t, num_kv_heads) = 0;
  TORCH_ARG(int64_t, head_dim) = 0;
  /// Rotary positions in the attention; none when unset.
  TORCH_ARG(c10::optional<RotaryOptions>, rotary) = c10::nullopt;
  TORCH_ARG(Activation, activation) = Activation::gelu;
  /// The gated MLP (SwiGLU with Activation::silu; see ParallelMLPOptions).
  TORCH_ARG(bool, gated_mlp) = false;
  /// LayerNorm (GPT-2) or RMSNorm (Llama) before each branch.
  TORCH_ARG(NormType, norm) = NormType::layer_norm;
  /// LayerNorm only: with a bias.
  TORCH_ARG(bool, norm_bias) = true;
  /// Dropout on each residual branch (a replicated region: every rank draws
  /// the same mask; with `sequence_parallel`, each its own, see there).
  TORCH_ARG(double, hidden_dropout) = 0.0;
  TORCH_ARG(double, attention_dropout) = 0.0;
  /// Epsilon of both norms (LayerNorm or RMSNorm).
  TORCH_ARG(double, layer_norm_eps) = 1e-5;
  /// Allow heads and ffn_hidden that do not divide by the world size (see
  /// ParallelSelfAttentionOptions and ParallelMLPOptions).
  TORCH_ARG(bool, uneven) = false;
  TORCH_ARG(std::shared_ptr<RngTracker>, rng) = nullptr;
  /// Sequence parallelism (Megatron's): the LayerNorms, dropouts and
  /// residuals run on this rank's part of the sequence, so their
  /// activations take 1/ws of the memory. `forward` takes and returns
  /// `[batch, seq / ws, d_model]`, this rank's part as
  /// `sequence_partition(seq)` splits it (the sequence length must divide
  /// by the world size; with `uneven(true)` it need not: the first
  /// `seq % ws` ranks hold one more position, and `forward` needs the full
  /// length). The sequence is all-gathered before the Q, K, V and fc1
  /// projections (only this rank's part is kept for backward, which gathers
  /// it again) and the output and fc2 projections' partial sums are
  /// reduce-scattered instead of all-reduced: the same bytes moved.
  /// Hidden dropout then draws from the sharded stream (each rank masks its
  /// own positions). The LayerNorm weights and the row-parallel biases are
  /// still replicated: their gradients, computed on a part of the sequence,
  /// are summed over the group within `backward()` (they enter through
  /// `copy_to_tp_region`), so nothing needs calling after it, and
  /// accumulation and `clip_grad_norm` work unchanged. Same outputs and
  /// gradients as without it.
  TORCH_ARG(bool, sequence_parallel) = false;
  /// Activation recomputation: keep only the layer's input and run its
  /// forward again in backward (`torchtp::recompute`), with the dropout
  /// streams set back so the masks are the same. Same outputs and
  /// gradients; one more forward per step.
  TORCH_ARG(bool, recompute) = false;
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
};

/// A pre-norm transformer block:
/// `x = x + drop(attn(ln1(x))); x = x + drop(mlp(ln2(x)))`, GPT-2's with
/// the default options and Llama's with RMSNorm, rotary positions,
/// grouped-query attention and the gated SiLU MLP. The norms are
/// replicated (every rank holds and updates the same copy; their
/// gradients agree across ranks without communication). Input and output
/// `[batch, seq, d_model]`, the same on every rank: two all-reduces forward,
/// two backward. With `sequence_parallel`, input and output are this
/// rank's part of the sequence (see the option).
///
/// Example (sequence parallel):
/// ```
///   torchtp::TransformerLayer layer(
///       torchtp::TransformerLayerOptions(1024, 16).sequence_parallel(true));
///   auto part = layer->sequence_partition(x.size(1));
///   auto y_part = layer(part.narrow(x, /*dim=*/1), x.size(1));
/// ```
class TransformerLayerImpl : public torch::nn::Cloneable<TransformerLayerImpl> {
 public:
  explicit TransformerLayerImpl(TransformerLayerOptions options);
  void reset() override;
  /// `seq_len` (sequence parallelism only): the full sequence length, of
  /// which `x` holds this rank's part; -1: `x.size(1)` times the world size
  /// (even splits only: with `uneven` the length must be given).
  torch::Tensor forward(const torch::Tensor& x, int64_t seq_len = -1);
  /// Inference with the attention's `cache` (see
  /// `ParallelSelfAttentionImpl::forward_cached`); no dropout. Whole
  /// sequences, the same on every rank, with or without sequence
  /// parallelism.
  torch::Tensor forward_cached(
      const torch::Tensor& x,
      KVCache& cache,
      const torch::Tensor& key_mask,
      const torch::Tensor& positions = {});
  /// Inference over many sequences (see
  /// `ParallelSelfAttentionImpl::forward_paged`).
  torch::Tensor forward_paged(
      const torch::Tensor& x,
      KVBlocks::Layer& cache,
      const PagedBatch& batch);
  /// How sequence parallelism splits a sequence of `seq_len` positions over
  /// this layer's group (by `Partition`'s uneven rule with `uneven`); raises
  /// a `c10::Error` naming the rank, the world size and the length when it
  /// does not divide and `uneven` is off.
  Partition sequence_partition(int64_t seq_len) const;

  TransformerLayerOptions options;
  Norm ln1{nullptr}, ln2{nullptr};
  ParallelSelfAttention attention{nullptr};
  ParallelMLP mlp{nullptr};

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(int64_t{-1})})

 private:
  torch::Tensor forward_once(const torch::Tensor& x, int64_t seq_len);

  c10::optional<Group> group_;
  std::shared_ptr<RngTracker> rng_;
};
TORCH_MODULE(TransformerLayer);

} // namespace torchtp
