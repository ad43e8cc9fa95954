#pragma once

#include "torchtp/gpt.h"

#include <cstdint>
#include <string>

namespace torchtp {

/// What a Hugging Face GPT-2 `config.json` says about the architecture.
struct GPT2Config {
  int64_t vocab_size = 50257;
  /// The context: `n_positions` (or the older `n_ctx`).
  int64_t n_positions = 1024;
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  /// 0: 4 x n_embd (the config's `null`).
  int64_t n_inner = 0;
  double layer_norm_epsilon = 1e-5;
  /// "gelu_new" and "gelu_pytorch_tanh" are GELU's tanh approximation,
  /// "gelu" the exact one.
  std::string activation_function = "gelu_new";
  bool tie_word_embeddings = true;
  /// -1 when the config has none.
  int64_t eos_token_id = -1;
};

/// Reads `dir/config.json`. Raises a `c10::Error` naming the file when it is
/// missing or malformed, or asks for what torchtp's GPT does not implement
/// (another `model_type`, `scale_attn_by_inverse_layer_idx`, an activation
/// other than the GELUs).
GPT2Config read_gpt2_config(const std::string& dir);

/// The `GPTOptions` of a GPT-2 with `config`: tanh GELU, tied output layer,
/// the config's LayerNorm epsilon, biases everywhere, and the vocabulary
/// padded to a multiple of 64 and of the group's size (50257 -> 50304 at 1,
/// 2, 3, 4 ranks; padded ids never win). With `uneven`, the vocabulary is
/// padded to a multiple of 64 only and it, the heads and the MLP are split
/// unevenly where the group's size does not divide them (12 heads at 5
/// ranks).
GPTOptions gpt2_options(
    const GPT2Config& config, const Group& group, bool uneven = false);

/// Options of `load_gpt2`.
struct LoadGPT2Options {
  /// Tensor-parallel group; default: the group of `init_from_env()`.
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  /// Dtype of the model; default float32, whatever the files hold.
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
  /// The most read from a file at once: the loader's only memory beyond the
  /// model's own shards (fewer, larger reads with more).
  TORCH_ARG(int64_t, block_bytes) = 8 << 20;
  /// Split heads and vocabulary unevenly when the group's size does not
  /// divide them (see `gpt2_options`).
  TORCH_ARG(bool, uneven) = false;  /// Quantize every layer's weight to int8 as it is read (quantize_int8 in
  /// quantize.h): resident memory about a quarter of float32's, never
  /// the float32 model at once. Activations keep `dtype`.
  TORCH_ARG(bool, int8_weights) = false;
};

/// A GPT built from a Hugging Face GPT-2 directory: `config.json` plus
/// `model.safetensors`, or several safetensors files listed by
/// `model.safetensors.index.json`. Each rank reads from the files only the
/// bytes of its own shards (positioned reads; the `Conv1D` weights, stored
/// `[in, out]`, are transposed shard by shard, and `c_attn` is split into
/// its Q, K, V thirds), so loading never holds the whole model. Names may
/// carry the `transformer.` prefix of `GPT2LMHeadModel`; the `attn.bias` and
/// `attn.masked_bias` buffers are skipped.
///
/// Raises a `c10::Error` naming the file and the tensor when a tensor is
/// missing, has another shape than the config implies, is unknown, or the
/// file is truncated or its header malformed.
///
/// Example (at any tensor-parallel size):
/// ```
///   auto gpt = torchtp::load_gpt2("gpt2");  // config.json, model.safetensors
///   torchtp::GenerateOptions opts;
///   auto out = torchtp::generate(*gpt, {{464, 2068, 7586}}, opts);
/// ```
GPT load_gpt2(const std::string& dir, const LoadGPT2Options& options = {});

} // namespace torchtp
