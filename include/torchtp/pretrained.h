#pragma once

#include "torchtp/gpt.h"
#include "torchtp/gpt2.h"
#include "torchtp/rotary.h"

#include <cstdint>
#include <string>
#include <vector>

namespace torchtp {

/// What a Hugging Face `config.json` says about a decoder torchtp can build:
/// `model_type` "llama", "mistral", "qwen2" or "gpt2". Keys the file leaves
/// out take the defaults of Hugging Face's config class for that
/// `model_type` (they differ: Mistral's `num_key_value_heads` is 8 when
/// missing, Llama's the number of query heads, Qwen2's 32).
struct PretrainedConfig {
  std::string model_type;
  /// The config.json read (for messages).
  std::string path;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  /// RMSNorm's (LayerNorm's for GPT-2).
  double rms_norm_eps = 1e-6;
  /// `rope_theta` and `rope_scaling` (or `rope_parameters`).
  RotaryOptions rotary;
  /// Biases of q_proj, k_proj, v_proj (Qwen2; Llama's `attention_bias`).
  bool qkv_bias = false;
  /// Bias of o_proj (Llama's `attention_bias`).
  bool proj_bias = false;
  /// Biases of gate_proj, up_proj, down_proj (Llama's `mlp_bias`).
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  /// The attention window when some layers use sliding-window attention
  /// (Mistral's `sliding_window`; Qwen2's with `use_sliding_window`), else
  /// 0. Contexts longer than it are refused (not implemented).
  int64_t sliding_window = 0;
  /// The config key that set `sliding_window`, for messages.
  std::string sliding_window_key;
  /// -1 when the config has none.
  int64_t bos_token_id = -1;
  /// `eos_token_id`: one id or a list (Llama 3 instruct); empty when none.
  std::vector<int64_t> eos_token_ids;
  /// The GPT-2 config when `model_type` is "gpt2".
  GPT2Config gpt2;

  /// The first end-of-sequence id, or -1.
  int64_t eos_token_id() const {
    return eos_token_ids.empty() ? -1 : eos_token_ids.front();
  }
};

/// Reads `dir/config.json`. Raises a `c10::Error` naming the file and the key
/// when the file is missing or malformed, or asks for what torchtp does not
/// implement: another `model_type`, a `hidden_act` other than "silu", a
/// `rope_scaling` other than "llama3", "linear" or "default", query heads not
/// a multiple of key/value heads.
PretrainedConfig read_pretrained_config(const std::string& dir);

/// Positions the KV cache holds when `LoadPretrainedOptions::max_seq_len`
/// is 0: the config's `max_position_embeddings`, at most
/// `kDefaultMaxSeqLen`, and at most the sliding window. (GPT-2:
/// `n_positions`, its position table's size.)
int64_t default_max_seq_len(const PretrainedConfig& config);

/// The largest context `default_max_seq_len` gives a rotary model: the KV
/// cache is allocated whole at its capacity, and Qwen2.5's 32768 (or
/// 131072) positions would cost gigabytes per sequence before the first
/// token; 4096 covers common prompts. Ask for more with `max_seq_len`.
constexpr int64_t kDefaultMaxSeqLen = 4096;

/// The `GPTOptions` of `config` over `group`, holding `max_seq_len`
/// positions (0: `default_max_seq_len`): RMSNorm with the config's epsilon,
/// rotary positions, grouped-query attention with the config's head_dim and
/// biases, the gated SiLU MLP, the output layer tied or not, and the
/// vocabulary padded to a multiple of 64 and of the group's size (with
/// `uneven`, of 64 only, and heads, key/value heads and the MLP split
/// unevenly where the size does not divide them). GPT-2: `gpt2_options`.
/// Raises naming the key when `max_seq_len` exceeds
/// `max_position_embeddings` or the sliding window.
GPTOptions pretrained_options(
    const PretrainedConfig& config,
    const Group& group,
    bool uneven = false,
    int64_t max_seq_len = 0);

/// Options of `load_pretrained`.
struct LoadPretrainedOptions {
  /// Tensor-parallel group; default: the group of `init_from_env()`.
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  /// Dtype of the model; default float32, whatever the files hold
  /// (float32, bfloat16, float16 or float64, converted block by block).
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
  /// The most read from a file at once: the loader's only memory beyond the
  /// model's own shards.
  TORCH_ARG(int64_t, block_bytes) = 8 << 20;
  /// Split heads, vocabulary and MLP unevenly where the group's size does
  /// not divide them.
  TORCH_ARG(bool, uneven) = false;
  /// Positions the model (and its KV cache) holds; 0:
  /// `default_max_seq_len(config)`. GPT-2 takes 0 or its `n_positions`.
  TORCH_ARG(int64_t, max_seq_len) = 0;  /// Quantize every layer's weight to int8 as it is read (quantize_int8 in
  /// quantize.h): resident memory about a quarter of float32's, never
  /// the float32 model at once. Activations keep `dtype`.
  TORCH_ARG(bool, int8_weights) = false;
};

/// A GPT built from a Hugging Face model directory: `config.json` plus
/// `model.safetensors`, or several safetensors files listed by
/// `model.safetensors.index.json`, of `model_type` "llama", "mistral",
/// "qwen2" (`LlamaForCausalLM`'s tensor names: `model.embed_tokens`,
/// `model.layers.N.self_attn.{q,k,v,o}_proj`, `..mlp.{gate,up,down}_proj`,
/// `..input_layernorm`, `..post_attention_layernorm`, `model.norm`,
/// `lm_head`) or "gpt2" (through `load_gpt2`). Each rank reads from the files
/// only the bytes of its own shards: q_proj, k_proj and v_proj become the
/// rank's rows of the fused qkv weight (its query heads and the key/value
/// heads they read), gate_proj and up_proj its rows of the gated MLP's fc1.
/// `rotary_emb.inv_freq` buffers, and a tied `lm_head.weight` saved anyway,
/// are skipped.
///
/// Raises a `c10::Error` naming the file and the tensor when a tensor is
/// missing, unknown, of another shape than config.json implies, or not
/// floating point; naming the key when config.json asks for what torchtp
/// does not implement (see `read_pretrained_config`), or a sliding window
/// shorter than `max_seq_len`.
///
/// Example (at any tensor-parallel size):
/// ```
///   auto lm = torchtp::load_pretrained(
///       "Qwen2.5-0.5B", torchtp::LoadPretrainedOptions().uneven(true));
///   auto out = torchtp::generate(*lm, {{9707, 11, 847}}, {});
/// ```
GPT load_pretrained(
    const std::string& dir, const LoadPretrainedOptions& options = {});

} // namespace torchtp
