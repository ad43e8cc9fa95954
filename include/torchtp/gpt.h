#pragma once

#include "torchtp/causal_lm.h"
#include "torchtp/cross_entropy.h"
#include "torchtp/embedding.h"
#include "torchtp/linear.h"
#include "torchtp/random.h"
#include "torchtp/transformer.h"

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace torchtp {

/// Options of `GPT`.
struct GPTOptions {
  GPTOptions(int64_t vocab_size, int64_t max_seq_len)
      : vocab_size_(vocab_size), max_seq_len_(max_seq_len) {}

  /// Number of token ids. The embedding and the output layer are padded to
  /// a multiple of `vocab_pad_multiple`, the same at every world size, so
  /// the full weights do not depend on the split; padded ids never win.
  TORCH_ARG(int64_t, vocab_size);
  TORCH_ARG(int64_t, max_seq_len);
  TORCH_ARG(int64_t, d_model) = 128;
  TORCH_ARG(int64_t, num_heads) = 4;
  TORCH_ARG(int64_t, num_layers) = 4;
  /// 0: 4 x d_model.
  TORCH_ARG(int64_t, ffn_hidden) = 0;
  TORCH_ARG(Activation, activation) = Activation::gelu;
  /// The family's parts (see TransformerLayerOptions): GPT-2's by default;
  /// a Llama is `norm(rms_norm).rotary(..).gated_mlp(true)
  /// .activation(silu).bias(false)` with its `num_kv_heads`.
  TORCH_ARG(NormType, norm) = NormType::layer_norm;
  TORCH_ARG(bool, norm_bias) = true;
  /// Biases of every projection but the output layer (which has none),
  /// unless `qkv_bias` / `proj_bias` say otherwise for the attention's.
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(c10::optional<bool>, qkv_bias) = c10::nullopt;
  TORCH_ARG(c10::optional<bool>, proj_bias) = c10::nullopt;
  /// 0: num_heads (multi-head attention).
  TORCH_ARG(int64_t, num_kv_heads) = 0;
  /// 0: d_model / num_heads.
  TORCH_ARG(int64_t, head_dim) = 0;
  TORCH_ARG(bool, gated_mlp) = false;
  /// Rotary positions in every attention instead of the learned position
  /// embedding (which is then not made).
  TORCH_ARG(c10::optional<RotaryOptions>, rotary) = c10::nullopt;
  /// Epsilon of every norm (LayerNorm or RMSNorm).
  TORCH_ARG(double, layer_norm_eps) = 1e-5;
  /// The output layer reuses the token embedding's weight (GPT-2's
  /// layout): no `lm_head` is made, and the shared weight gets the
  /// gradients of both uses. Both are split the same way over the
  /// vocabulary, so the tie needs no communication.
  TORCH_ARG(bool, tie_embeddings) = false;
  TORCH_ARG(double, hidden_dropout) = 0.0;
  TORCH_ARG(double, attention_dropout) = 0.0;
  TORCH_ARG(int64_t, vocab_pad_multiple) = 64;
  /// Allow sizes that do not divide by the tensor-parallel size: the
  /// (padded) vocabulary, heads and ffn_hidden are split by `Partition`'s
  /// uneven rule (the first `size % ws` ranks hold one more id, head or
  /// feature), so e.g. vocabulary 50257 with `vocab_pad_multiple(1)` and 12
  /// heads run at TP=5. False: such sizes raise a `c10::Error`.
  TORCH_ARG(bool, uneven) = false;
  /// Seed of the dropout streams (the weights come from the global
  /// generator, like any torch module's).
  TORCH_ARG(uint64_t, dropout_seed) = 1234;
  /// Sequence parallelism (see `TransformerLayerOptions`): between the
  /// embedding and the output layer every rank holds only its part of the
  /// sequence (which must divide by the world size, unless `uneven`: then
  /// the first `seq % ws` ranks hold one more position). The token embedding's
  /// partial sums are reduce-scattered along the sequence instead of
  /// all-reduced, the embedding dropout draws from the sharded stream, the
  /// layers and the final LayerNorm run on the part, and the output layer
  /// all-gathers the sequence back. Inputs, logits and every gradient are
  /// the same as without it; replicated parameters' gradients (LayerNorms,
  /// position embedding, row-parallel biases) are summed over the group
  /// within `backward()`.
  TORCH_ARG(bool, sequence_parallel) = false;
  /// Activation recomputation in every layer (see
  /// `TransformerLayerOptions`): each keeps only its input and runs again in
  /// backward, with the same dropout masks.
  TORCH_ARG(bool, recompute) = false;
  /// Tensor-parallel group; default: the group of `init_from_env()`.
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
};

/// The cache of a `GPT` (see `LMCache`).
using GPTCache = LMCache;

/// A GPT-style decoder built from torchtp blocks: a `VocabParallelEmbedding`
/// plus a replicated position embedding (none with rotary positions),
/// `num_layers` pre-norm `TransformerLayer`s, a final norm, and a
/// `ColumnParallelLinear` output layer (or, with `tie_embeddings`, the
/// token embedding's weight) that leaves the logits split over the
/// vocabulary, for `vocab_parallel_cross_entropy`. Its options make it any
/// family of that shape: GPT-2, or Llama, Mistral and Qwen2 (RMSNorm,
/// rotary positions, grouped-query attention, gated SiLU MLP).
/// `load_gpt2` (gpt2.h) builds one from a Hugging Face GPT-2 checkpoint,
/// `load_pretrained` (pretrained.h) from a GPT-2, Llama, Mistral or Qwen2 one.
///
/// Built after the same `torch::manual_seed`, its full weights are the same
/// at every tensor-parallel size, and so are its logits and gradients.
///
/// Example:
/// ```
///   torch::manual_seed(0);
///   torchtp::GPT gpt(torchtp::GPTOptions(vocab, 128).d_model(256));
///   auto loss = gpt->loss(ids, targets);  // ids, targets: [batch, seq]
///   loss.backward();
/// ```
class GPTImpl : public torch::nn::Cloneable<GPTImpl>, public CausalLM {
 public:
  explicit GPTImpl(GPTOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// ids `[batch, seq]` -> this rank's logits `[batch, seq, V_padded / ws]`.
  torch::Tensor forward(const torch::Tensor& ids);
  /// Mean next-token cross-entropy of `forward(ids)` against `targets`
  /// (`[batch, seq]`, `ignore_index` -100), never gathering the logits.
  torch::Tensor loss(
      const torch::Tensor& ids,
      const torch::Tensor& targets,
      double label_smoothing = 0.0);
  /// An empty cache for `forward_cached`, holding up to `max_seq_len`
  /// positions (see `CausalLM::make_cache`).
  LMCache make_cache(
      c10::optional<torch::Dtype> kv_dtype = c10::nullopt) const override;
  /// Inference: this rank's logits `[batch, s, V_padded / ws]` for new ids
  /// `[batch, s]` that follow those in `cache` (which they join). `mask`
  /// `[batch, s]` (bool; default all true) marks the real tokens: padding
  /// takes no position and is never attended to, so left-padded prompts of
  /// different lengths decode as each would alone. Each sequence's
  /// positions count its real tokens. `last_only`: the last column's
  /// logits `[batch, 1, V_padded / ws]` only. No dropout; run it under
  /// `torch::InferenceMode` or `torch::NoGradGuard`.
  torch::Tensor forward_cached(
      const torch::Tensor& ids,
      LMCache& cache,
      const torch::Tensor& mask = {},
      bool last_only = false) override;
  /// A pool of keys and values for `forward_paged` (see `CausalLM`).
  KVBlocks make_kv_blocks(
      int64_t num_blocks,
      int64_t block_size,
      c10::optional<torch::Dtype> kv_dtype = c10::nullopt) const override;
  /// Inference over many sequences' new tokens at once, each attending to
  /// its own positions in `cache` (see `CausalLM::forward_paged`).
  torch::Tensor forward_paged(const PagedBatch& batch, KVBlocks& cache)
      override;
  /// Full logits over the real vocabulary, `[batch, seq, vocab_size]`, the
  /// same on every rank (all-gathers; for sampling and tests).
  torch::Tensor full_logits(const torch::Tensor& ids);

  int64_t padded_vocab_size() const {
    return padded_vocab_;
  }
  /// How the (padded) vocabulary of the logits is split over the ranks.
  const Partition& vocab_partition() const override {
    return token_embedding->vocab_partition();
  }
  int64_t vocab_size() const override {
    return options.vocab_size();
  }
  int64_t max_seq_len() const override {
    return options.max_seq_len();
  }
  torch::nn::Module& module() override {
    return *this;
  }
  /// The dropout streams; reseed them to make a step reproducible.
  RngTracker& rng() {
    return *rng_;
  }
  const Group& group() const override {
    return *group_;
  }

  GPTOptions options;
  VocabParallelEmbedding token_embedding{nullptr};
  /// Empty with rotary positions.
  torch::nn::Embedding position_embedding{nullptr};
  torch::nn::ModuleList layers{nullptr};
  Norm final_norm{nullptr};
  /// Empty with `tie_embeddings`.
  ColumnParallelLinear lm_head{nullptr};

 private:
  // This rank's logits of the final hidden states of the whole sequence.
  torch::Tensor output(const torch::Tensor& h);
  // forward() with sequence parallelism.
  torch::Tensor forward_sequence_parallel(const torch::Tensor& ids);

  c10::optional<Group> group_;
  int64_t padded_vocab_ = 0;
  std::shared_ptr<RngTracker> rng_;
};
TORCH_MODULE(GPT);

} // namespace torchtp
