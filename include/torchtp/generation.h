#pragma once

#include "torchtp/causal_lm.h"
#include "torchtp/sampling.h"

#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace torchtp {

/// Options of `generate`.
struct GenerateOptions {
  /// Tokens generated per prompt at most; a prompt plus these must fit the
  /// model's context (`max_seq_len`).
  TORCH_ARG(int64_t, max_new_tokens) = 32;
  /// How each token is chosen; its `vocab_size` and `group` are the model's.
  TORCH_ARG(SamplingOptions, sampling) = SamplingOptions().greedy(true);
  /// Seed of the sampling generator: the same on every rank, so every rank
  /// picks the same tokens.
  TORCH_ARG(uint64_t, seed) = 0;
  /// A sequence ends after generating this id (-1: none).
  TORCH_ARG(int64_t, eos_id) = -1;
  /// Record the `top_logits` largest logits of every step (0: none).
  TORCH_ARG(int64_t, top_logits) = 0;
  /// What the key/value cache stores: bfloat16 halves a float32 or int8
  /// model's cache and the bytes attention reads per token, each key and
  /// value rounded once when stored; none: the model's dtype (float32 for
  /// int8 models). See `CausalLM::make_cache`.
  TORCH_ARG(c10::optional<torch::Dtype>, kv_cache_dtype) = c10::nullopt;
};

/// What `generate` produced, the same on every rank.
struct Generation {
  /// Per prompt, the generated ids (ending with `eos_id` when it came).
  std::vector<std::vector<int64_t>> tokens;
  /// Per step, the recorded largest logits `[prompts, top_logits]` (rows of
  /// finished sequences included).
  std::vector<TopLogits> top;
  /// Wall time of the prompt pass and of each generated token after it.
  double prefill_seconds = 0;
  std::vector<double> step_seconds;
};

/// Generates from `prompts` (ids below the vocabulary size, at least one
/// each; lengths may differ): one pass over the left-padded prompts fills
/// the key/value caches, then one token per pass. Collective over the
/// model's group: every rank calls it with the same prompts and options.
/// Runs under `torch::InferenceMode` with dropout off (the module's
/// training flag is restored). `on_token(step, ids)`, when given, sees each
/// step's ids `[prompts]` as they come (e.g. to stream them).
Generation generate(
    CausalLM& model,
    const std::vector<std::vector<int64_t>>& prompts,
    const GenerateOptions& options = {},
    const std::function<void(int64_t, const at::Tensor&)>& on_token = nullptr);

} // namespace torchtp
