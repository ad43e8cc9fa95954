#pragma once

#include "torchtp/group.h"
#include "torchtp/linear.h"
#include "torchtp/random.h"

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <array>
#include <cstdint>
#include <memory>

namespace torchtp {

/// The MLP's nonlinearity.
enum class Activation {
  /// The exact GELU, `x * Phi(x)` (torch's default).
  gelu,
  /// GELU's tanh approximation (GPT-2's "gelu_new").
  gelu_tanh,
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
  /// Allow an ffn_hidden that does not divide by the world size (see
  /// `Partition`: the first `ffn_hidden % ws` ranks hold one more unit).
  TORCH_ARG(bool, uneven) = false;
  /// Ranks to split over; default: the group of `init_from_env()`.
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
};

/// The transformer feed-forward block: `fc2(act(fc1(x)))` with `fc1` a
/// `ColumnParallelLinear` (d_model -> ffn_hidden/ws, no gather) and `fc2` a
/// `RowParallelLinear` (ffn_hidden/ws -> d_model). Input and output
/// `[*, d_model]`, the same on every rank; one all-reduce forward, one
/// backward.
class ParallelMLPImpl : public torch::nn::Cloneable<ParallelMLPImpl> {
 public:
  explicit ParallelMLPImpl(ParallelMLPOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& x);

  ParallelMLPOptions options;
  ColumnParallelLinear fc1{nullptr};
  RowParallelLinear fc2{nullptr};
};
TORCH_MODULE(ParallelMLP);

/// The keys and values one `ParallelSelfAttention` has seen, for decoding a
/// token at a time: this rank's heads only, in buffers of `capacity`
/// positions allocated on first use.
struct KVCache {
  explicit KVCache(int64_t capacity = 0) : capacity(capacity) {}
  int64_t capacity;
  /// Positions filled so far.
  int64_t length = 0;
  /// `[batch, local_heads, capacity, head_dim]`.
  torch::Tensor k, v;
};

/// Options of `ParallelSelfAttention`.
struct ParallelSelfAttentionOptions {
  ParallelSelfAttentionOptions(int64_t d_model, int64_t num_heads)
      : d_model_(d_model), num_heads_(num_heads) {}

  TORCH_ARG(int64_t, d_model);
  /// Number of heads; split over the ranks (each rank holds whole heads).
  TORCH_ARG(int64_t, num_heads);
  /// Mask future positions (a decoder).
  TORCH_ARG(bool, causal) = true;
  TORCH_ARG(bool, bias) = true;
  /// Dropout on the attention probabilities (a sharded region: each rank
  /// draws from its own stream).
  TORCH_ARG(double, attention_dropout) = 0.0;
  /// Allow a number of heads that does not divide by the world size: the
  /// first `num_heads % ws` ranks hold one more whole head (12 heads over 5
  /// ranks: 3, 3, 2, 2, 2). Every rank needs at least one head.
  TORCH_ARG(bool, uneven) = false;
  /// Streams for dropout; default: a tracker seeded with 0.
  TORCH_ARG(std::shared_ptr<RngTracker>, rng) = nullptr;
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
};

/// Multi-head self-attention with the heads split over the ranks. The fused
/// Q, K, V projection is a `ColumnParallelLinear` with `segments(3)`: its
/// full weight is the `[Wq; Wk; Wv]` stack (`[3 d_model, d_model]`) at every
/// world size, and rank r holds whole heads of each. The output projection
/// is a `RowParallelLinear`. Input and output `[batch, seq, d_model]`, the
/// same on every rank; one all-reduce forward, one backward.
class ParallelSelfAttentionImpl
    : public torch::nn::Cloneable<ParallelSelfAttentionImpl> {
 public:
  explicit ParallelSelfAttentionImpl(ParallelSelfAttentionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& x);
  /// Inference on new positions `x [batch, s, d_model]` after the ones held
  /// in `cache`, which they join. `key_mask [batch, cache.length + s]`
  /// (bool) says which positions, old and new, are real tokens: padding is
  /// never attended to. Causal attention (the option is ignored), no
  /// dropout. Equals `forward` on the whole sequence, for the new rows.
  torch::Tensor forward_cached(
      const torch::Tensor& x, KVCache& cache, const torch::Tensor& key_mask);

  /// Heads on this rank.
  int64_t local_heads() const {
    return local_heads_;
  }

  ParallelSelfAttentionOptions options;
  ColumnParallelLinear qkv{nullptr};
  RowParallelLinear proj{nullptr};

 private:
  void check_input(const torch::Tensor& x) const;
  // Q, K, V of x, each [batch, local_heads, seq, head_dim].
  std::array<torch::Tensor, 3> project(const torch::Tensor& x);
  // Attention of q over k, v where `allowed` [.., s_q, s_k] is true, then
  // the output projection.
  torch::Tensor attend(
      const torch::Tensor& q,
      const torch::Tensor& k,
      const torch::Tensor& v,
      const torch::Tensor& allowed,
      bool with_dropout);

  int64_t local_heads_ = 0;
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
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(Activation, activation) = Activation::gelu;
  /// Dropout on each residual branch (a replicated region: every rank draws
  /// the same mask).
  TORCH_ARG(double, hidden_dropout) = 0.0;
  TORCH_ARG(double, attention_dropout) = 0.0;
  TORCH_ARG(double, layer_norm_eps) = 1e-5;
  /// Allow heads and ffn_hidden that do not divide by the world size (see
  /// ParallelSelfAttentionOptions and ParallelMLPOptions).
  TORCH_ARG(bool, uneven) = false;
  TORCH_ARG(std::shared_ptr<RngTracker>, rng) = nullptr;
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
};

/// A pre-norm transformer block:
/// `x = x + drop(attn(ln1(x))); x = x + drop(mlp(ln2(x)))`. The LayerNorms
/// are replicated (every rank holds and updates the same copy; their
/// gradients agree across ranks without communication). Input and output
/// `[batch, seq, d_model]`, the same on every rank: two all-reduces forward,
/// two backward.
class TransformerLayerImpl : public torch::nn::Cloneable<TransformerLayerImpl> {
 public:
  explicit TransformerLayerImpl(TransformerLayerOptions options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  /// Inference with the attention's `cache` (see
  /// `ParallelSelfAttentionImpl::forward_cached`); no dropout.
  torch::Tensor forward_cached(
      const torch::Tensor& x, KVCache& cache, const torch::Tensor& key_mask);

  TransformerLayerOptions options;
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  ParallelSelfAttention attention{nullptr};
  ParallelMLP mlp{nullptr};

 private:
  std::shared_ptr<RngTracker> rng_;
};
TORCH_MODULE(TransformerLayer);

} // namespace torchtp
