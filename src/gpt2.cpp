#include "torchtp/gpt2.h"

#include "detail/check.h"
#include "detail/hf_files.h"
#include "detail/options.h"

#include <nlohmann/json.hpp>

#include <set>

namespace torchtp {
namespace {

constexpr const char* kLoadGPT2 = "torchtp::load_gpt2";

using detail::ParameterSource;

// Every parameter of a GPT-2-shaped GPT with where it is stored: `Conv1D`
// weights transposed, the vocabulary tables' stored rows fewer than the
// padded parameter's.
detail::ParameterSources sources(const GPT2Config& c) {
  detail::ParameterSources out;
  auto both = [&](const std::string& to, const std::string& from, bool conv) {
    out[to + ".weight"] = {{{from + ".weight"}}, conv};
    out[to + ".bias"] = {{{from + ".bias"}}};
  };
  out["token_embedding.weight"] = {{{"wte.weight", c.vocab_size}}};
  out["position_embedding.weight"] = {{{"wpe.weight"}}};
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const auto to = "layers." + std::to_string(i) + ".";
    const auto from = "h." + std::to_string(i) + ".";
    both(to + "ln1", from + "ln_1", false);
    both(to + "attention.qkv", from + "attn.c_attn", true);
    both(to + "attention.proj", from + "attn.c_proj", true);
    both(to + "ln2", from + "ln_2", false);
    both(to + "mlp.fc1", from + "mlp.c_fc", true);
    both(to + "mlp.fc2", from + "mlp.c_proj", true);
  }
  both("final_norm", "ln_f", false);
  if (!c.tie_word_embeddings) {
    out["lm_head.weight"] = {{{"lm_head.weight", c.vocab_size}}};
  }
  return out;
}

// Stored names the model has no use for: GPT-2's causal-mask buffers, and a
// tied output layer saved anyway.
bool skipped(const std::string& name, const GPT2Config& c) {
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const auto attn = "h." + std::to_string(i) + ".attn.";
    if (name == attn + "bias" || name == attn + "masked_bias") {
      return true;
    }
  }
  return c.tie_word_embeddings && name == "lm_head.weight";
}

} // namespace

GPT2Config read_gpt2_config(const std::string& dir) {
  const auto path = detail::join_path(dir, "config.json");
  const auto json = detail::read_json(path, kLoadGPT2);
  TORCH_CHECK(json.is_object(), kLoadGPT2, ": ", path, " is not a JSON object");
  GPT2Config c;
  try {
    auto get = [&](const char* key, auto& value) {
      if (json.contains(key) && !json[key].is_null()) {
        value = json[key].get<std::decay_t<decltype(value)>>();
      }
    };
    const std::string type = json.value("model_type", "gpt2");
    TORCH_CHECK(
        type == "gpt2", kLoadGPT2, ": ", path, ": model_type is \"", type,
        "\"; only \"gpt2\" is supported");
    get("n_ctx", c.n_positions);
    get("n_positions", c.n_positions);
    get("vocab_size", c.vocab_size);
    get("n_embd", c.n_embd);
    get("n_layer", c.n_layer);
    get("n_head", c.n_head);
    get("n_inner", c.n_inner);
    get("layer_norm_epsilon", c.layer_norm_epsilon);
    get("activation_function", c.activation_function);
    get("tie_word_embeddings", c.tie_word_embeddings);
    get("eos_token_id", c.eos_token_id);
    TORCH_CHECK(
        !json.value("scale_attn_by_inverse_layer_idx", false) &&
            json.value("scale_attn_weights", true),
        kLoadGPT2, ": ", path,
        ": only attention scaled by 1/sqrt(head_dim) is supported "
        "(scale_attn_weights true, scale_attn_by_inverse_layer_idx false)");
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, kLoadGPT2, ": ", path, " is malformed: ", e.what());
  }
  static const std::set<std::string> gelus = {
      "gelu_new", "gelu_pytorch_tanh", "gelu"};
  TORCH_CHECK(
      gelus.count(c.activation_function) > 0, kLoadGPT2, ": ", path,
      ": activation_function \"", c.activation_function,
      "\" is not supported (gelu_new, gelu_pytorch_tanh or gelu)");
  TORCH_CHECK(
      c.vocab_size > 0 && c.n_positions > 0 && c.n_embd > 0 && c.n_layer >= 0 &&
          c.n_head > 0 && c.n_inner >= 0 && c.layer_norm_epsilon > 0,
      kLoadGPT2, ": ", path,
      ": vocab_size, n_positions, n_embd, n_head and layer_norm_epsilon must "
      "be positive, n_layer and n_inner not negative");
  return c;
}

GPTOptions gpt2_options(const GPT2Config& c, const Group& group, bool uneven) {
  return GPTOptions(c.vocab_size, c.n_positions)
      .d_model(c.n_embd)
      .num_heads(c.n_head)
      .num_layers(c.n_layer)
      .ffn_hidden(c.n_inner)
      .activation(
          c.activation_function == "gelu" ? Activation::gelu
                                          : Activation::gelu_tanh)
      .layer_norm_eps(c.layer_norm_epsilon)
      .tie_embeddings(c.tie_word_embeddings)
      .vocab_pad_multiple(detail::loaded_vocab_pad_multiple(group, uneven))
      .uneven(uneven)
      .group(group);
}

GPT load_gpt2(const std::string& dir, const LoadGPT2Options& options) {
  const Group group = detail::group_or_default(options.group());
  TORCHTP_CHECK(
      options.block_bytes() > 0, kLoadGPT2, group,
      "block_bytes must be positive");
  const auto config = read_gpt2_config(dir);
  // Open and check every file, and find every tensor, before the model
  // takes memory.
  detail::HFFiles files(dir, group, kLoadGPT2, "transformer.");
  const auto from = sources(config);
  detail::check_tensors(
      files, from,
      [&](const std::string& name) { return skipped(name, config); },
      "a GPT-2 of config.json (n_layer " + std::to_string(config.n_layer) +
          ")");
  return detail::load_gpt(
      gpt2_options(config, group, options.uneven()).dtype(options.dtype()),
      files, from, static_cast<uint64_t>(options.block_bytes()),
      options.int8_weights());
}

} // namespace torchtp
