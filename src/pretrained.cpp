#include "torchtp/pretrained.h"

#include "detail/check.h"
#include "detail/hf_files.h"
#include "detail/options.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>

namespace torchtp {
namespace {

constexpr const char* kLoadPretrained = "torchtp::load_pretrained";

// The defaults of Hugging Face's config class of each Llama-layout
// model_type (LlamaConfig, MistralConfig, Qwen2Config), for keys a
// config.json leaves out.
struct FamilyDefaults {
  int64_t vocab_size, hidden_size, intermediate_size, num_hidden_layers;
  int64_t num_attention_heads;
  // -1: as many as query heads.
  int64_t num_key_value_heads;
  int64_t max_position_embeddings;
  int64_t bos_token_id, eos_token_id;
  // Mistral's and Qwen2's sliding_window; 0: none.
  int64_t sliding_window;
};

const std::map<std::string, FamilyDefaults>& family_defaults() {
  static const std::map<std::string, FamilyDefaults> d = {
      {"llama", {32000, 4096, 11008, 32, 32, -1, 2048, 1, 2, 0}},
      {"mistral", {32000, 4096, 14336, 32, 32, 8, 4096 * 32, 1, 2, 4096}},
      {"qwen2", {151936, 4096, 22016, 32, 32, 32, 32768, -1, -1, 4096}},
  };
  return d;
}

// Typed reads of config.json keys that name the file and the key when a
// value has the wrong type.
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& json, std::string path)
      : json_(json), path_(std::move(path)) {}

  bool has(const std::string& key) const {
    return json_.contains(key);
  }
  bool is_null(const std::string& key) const {
    return has(key) && json_[key].is_null();
  }
  // Missing or null: `fallback`.
  int64_t integer(const std::string& key, int64_t fallback) const {
    return integer_in(json_, key, fallback, "");
  }
  int64_t integer_in(
      const nlohmann::json& object,
      const std::string& key,
      int64_t fallback,
      const std::string& where) const {
    if (!object.contains(key) || object[key].is_null()) {
      return fallback;
    }
    TORCH_CHECK(
        object[key].is_number_integer(), kLoadPretrained, ": ", path_, ": ",
        where, key, " must be an integer, got ", object[key].dump());
    return object[key].get<int64_t>();
  }
  double number(const std::string& key, double fallback) const {
    return number_in(json_, key, fallback, "");
  }
  double number_in(
      const nlohmann::json& object,
      const std::string& key,
      double fallback,
      const std::string& where) const {
    if (!object.contains(key) || object[key].is_null()) {
      return fallback;
    }
    TORCH_CHECK(
        object[key].is_number(), kLoadPretrained, ": ", path_, ": ", where, key,
        " must be a number, got ", object[key].dump());
    return object[key].get<double>();
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key) || json_[key].is_null()) {
      return fallback;
    }
    TORCH_CHECK(
        json_[key].is_boolean(), kLoadPretrained, ": ", path_, ": ", key,
        " must be true or false, got ", json_[key].dump());
    return json_[key].get<bool>();
  }
  std::string string(
      const std::string& key, const std::string& fallback) const {
    if (!has(key) || json_[key].is_null()) {
      return fallback;
    }
    TORCH_CHECK(
        json_[key].is_string(), kLoadPretrained, ": ", path_, ": ", key,
        " must be a string, got ", json_[key].dump());
    return json_[key].get<std::string>();
  }
  const nlohmann::json& json() const {
    return json_;
  }
  const std::string& path() const {
    return path_;
  }

 private:
  const nlohmann::json& json_;
  std::string path_;
};

// rope_theta and rope_scaling, or transformers 5's rope_parameters (which
// holds rope_theta too).
RotaryOptions read_rotary(const ConfigReader& r) {
  RotaryOptions rotary;
  rotary.theta(r.number("rope_theta", 10000.0));
  const char* key = r.has("rope_parameters") && !r.is_null("rope_parameters")
                        ? "rope_parameters"
                        : "rope_scaling";
  if (!r.has(key) || r.is_null(key)) {
    return rotary;
  }
  const auto& rope = r.json()[key];
  const std::string where = std::string(key) + ".";
  TORCH_CHECK(
      rope.is_object(), kLoadPretrained, ": ", r.path(), ": ", key,
      " must be an object or null, got ", rope.dump());
  rotary.theta(r.number_in(rope, "rope_theta", rotary.theta(), where));
  const char* type_key = rope.contains("rope_type") ? "rope_type" : "type";
  TORCH_CHECK(
      rope.contains(type_key) && rope[type_key].is_string(), kLoadPretrained,
      ": ", r.path(), ": ", key, " has no \"rope_type\" (or \"type\") string");
  const auto type = rope[type_key].get<std::string>();
  auto required = [&](const char* name) {
    TORCH_CHECK(
        rope.contains(name) && rope[name].is_number(), kLoadPretrained, ": ",
        r.path(), ": ", key, " of type \"", type, "\" needs a number ", name);
    return rope[name].get<double>();
  };
  if (type == "default") {
    return rotary;
  }
  if (type == "linear") {
    return rotary.scaling(RopeScalingType::linear).factor(required("factor"));
  }
  if (type == "llama3") {
    return rotary.scaling(RopeScalingType::llama3)
        .factor(required("factor"))
        .low_freq_factor(required("low_freq_factor"))
        .high_freq_factor(required("high_freq_factor"))
        .original_max_position_embeddings(
            static_cast<int64_t>(required("original_max_position_embeddings")));
  }
  TORCH_CHECK(
      false, kLoadPretrained, ": ", r.path(), ": ", key, " ", type_key, " \"",
      type, "\" is not supported (llama3, linear or default)");
}

PretrainedConfig read_llama_family(
    const ConfigReader& r, const std::string& type) {
  const auto& d = family_defaults().at(type);
  PretrainedConfig c;
  c.model_type = type;
  c.path = r.path();
  c.vocab_size = r.integer("vocab_size", d.vocab_size);
  c.hidden_size = r.integer("hidden_size", d.hidden_size);
  c.intermediate_size = r.integer("intermediate_size", d.intermediate_size);
  c.num_hidden_layers = r.integer("num_hidden_layers", d.num_hidden_layers);
  c.num_attention_heads =
      r.integer("num_attention_heads", d.num_attention_heads);
  // Missing: the class's default; null: as many as query heads (every
  // class says so "for backward compatibility").
  c.num_key_value_heads =
      r.has("num_key_value_heads")
          ? r.integer("num_key_value_heads", c.num_attention_heads)
          : (d.num_key_value_heads < 0 ? c.num_attention_heads
                                       : d.num_key_value_heads);
  c.max_position_embeddings =
      r.integer("max_position_embeddings", d.max_position_embeddings);
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.rotary = read_rotary(r);
  TORCH_CHECK(
      c.hidden_size > 0 && c.num_attention_heads > 0, kLoadPretrained, ": ",
      r.path(), ": hidden_size and num_attention_heads must be positive, got ",
      c.hidden_size, " and ", c.num_attention_heads);
  const bool explicit_head_dim = r.has("head_dim") && !r.is_null("head_dim");
  TORCH_CHECK(
      explicit_head_dim || c.hidden_size % c.num_attention_heads == 0,
      kLoadPretrained, ": ", r.path(), ": hidden_size (", c.hidden_size,
      ") is not a multiple of num_attention_heads (", c.num_attention_heads,
      ") and there is no head_dim");
  c.head_dim = r.integer("head_dim", c.hidden_size / c.num_attention_heads);

  const auto act = r.string("hidden_act", "silu");
  TORCH_CHECK(
      act == "silu", kLoadPretrained, ": ", r.path(), ": hidden_act \"", act,
      "\" is not supported (silu)");
  if (type == "llama") {
    c.qkv_bias = c.proj_bias = r.boolean("attention_bias", false);
    c.mlp_bias = r.boolean("mlp_bias", false);
  } else if (type == "qwen2") {
    // Qwen2's attention always has q, k, v biases and no o_proj bias.
    c.qkv_bias = true;
  }

  // Sliding-window attention: Mistral's applies to every layer unless
  // sliding_window is null; Qwen2's only with use_sliding_window, and then
  // to the layers from max_window_layers on (or those layer_types names).
  const int64_t window = r.has("sliding_window")
                             ? r.integer("sliding_window", 0)
                             : d.sliding_window;
  if (type == "mistral") {
    c.sliding_window = window;
    c.sliding_window_key = "sliding_window";
  } else if (type == "qwen2" && r.boolean("use_sliding_window", false)) {
    bool any_layer = r.integer("max_window_layers", 28) < c.num_hidden_layers;
    if (r.has("layer_types") && r.json()["layer_types"].is_array()) {
      const auto& types = r.json()["layer_types"];
      any_layer = std::any_of(types.begin(), types.end(), [](const auto& t) {
        return t == "sliding_attention";
      });
    }
    c.sliding_window = any_layer ? window : 0;
    c.sliding_window_key = "sliding_window (with use_sliding_window true)";
  }

  c.bos_token_id = r.integer("bos_token_id", d.bos_token_id);
  if (r.has("eos_token_id") && r.json()["eos_token_id"].is_array()) {
    for (const auto& id : r.json()["eos_token_id"]) {
      TORCH_CHECK(
          id.is_number_integer(), kLoadPretrained, ": ", r.path(),
          ": eos_token_id must be an integer or a list of them, got ",
          r.json()["eos_token_id"].dump());
      c.eos_token_ids.push_back(id.get<int64_t>());
    }
  } else {
    const int64_t eos = r.integer("eos_token_id", d.eos_token_id);
    if (eos >= 0) {
      c.eos_token_ids.push_back(eos);
    }
  }

  TORCH_CHECK(
      c.vocab_size > 0 && c.intermediate_size > 0 && c.num_hidden_layers >= 0 &&
          c.num_key_value_heads > 0 && c.head_dim > 0 &&
          c.max_position_embeddings > 0 && c.rms_norm_eps > 0 &&
          c.sliding_window >= 0,
      kLoadPretrained, ": ", r.path(),
      ": vocab_size, intermediate_size, num_key_value_heads, head_dim, "
      "max_position_embeddings and rms_norm_eps must be positive, "
      "num_hidden_layers and sliding_window not negative");
  TORCH_CHECK(
      c.num_attention_heads % c.num_key_value_heads == 0, kLoadPretrained, ": ",
      r.path(), ": num_attention_heads (", c.num_attention_heads,
      ") is not a multiple of num_key_value_heads (", c.num_key_value_heads,
      ")");
  return c;
}

// Where each GPT parameter of a Llama-layout model is stored: the fused
// qkv weight from q_proj, k_proj, v_proj, the gated MLP's fc1 from
// gate_proj and up_proj, both along dim 0 in that order.
detail::ParameterSources llama_sources(const PretrainedConfig& c) {
  detail::ParameterSources out;
  const int64_t q = c.num_attention_heads * c.head_dim;
  const int64_t kv = c.num_key_value_heads * c.head_dim;
  const int64_t ffn = c.intermediate_size;
  auto fused = [&](const std::string& prefix,
                   const std::vector<std::pair<std::string, int64_t>>& parts,
                   const std::string& suffix) {
    detail::ParameterSource source;
    for (const auto& [name, rows] : parts) {
      source.parts.push_back({prefix + name + suffix, rows});
    }
    return source;
  };
  out["token_embedding.weight"] = {
      {{"model.embed_tokens.weight", c.vocab_size}}};
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const auto to = "layers." + std::to_string(i) + ".";
    const auto from = "model.layers." + std::to_string(i) + ".";
    const auto attn = from + "self_attn.";
    const auto mlp = from + "mlp.";
    out[to + "ln1.weight"] = {{{from + "input_layernorm.weight"}}};
    out[to + "ln2.weight"] = {{{from + "post_attention_layernorm.weight"}}};
    const std::vector<std::pair<std::string, int64_t>> qkv = {
        {"q_proj", q}, {"k_proj", kv}, {"v_proj", kv}};
    const std::vector<std::pair<std::string, int64_t>> gate_up = {
        {"gate_proj", ffn}, {"up_proj", ffn}};
    out[to + "attention.qkv.weight"] = fused(attn, qkv, ".weight");
    out[to + "attention.proj.weight"] = {{{attn + "o_proj.weight"}}};
    out[to + "mlp.fc1.weight"] = fused(mlp, gate_up, ".weight");
    out[to + "mlp.fc2.weight"] = {{{mlp + "down_proj.weight"}}};
    if (c.qkv_bias) {
      out[to + "attention.qkv.bias"] = fused(attn, qkv, ".bias");
    }
    if (c.proj_bias) {
      out[to + "attention.proj.bias"] = {{{attn + "o_proj.bias"}}};
    }
    if (c.mlp_bias) {
      out[to + "mlp.fc1.bias"] = fused(mlp, gate_up, ".bias");
      out[to + "mlp.fc2.bias"] = {{{mlp + "down_proj.bias"}}};
    }
  }
  out["final_norm.weight"] = {{{"model.norm.weight"}}};
  if (!c.tie_word_embeddings) {
    out["lm_head.weight"] = {{{"lm_head.weight", c.vocab_size}}};
  }
  return out;
}

// Stored tensors the model has no use for: rotary inverse frequencies
// (recomputed from the config), and a tied output layer saved anyway.
bool llama_skipped(const std::string& name, const PretrainedConfig& c) {
  static const std::string inv_freq = "rotary_emb.inv_freq";
  return (name.size() >= inv_freq.size() &&
          name.compare(
              name.size() - inv_freq.size(), inv_freq.size(), inv_freq) == 0) ||
         (c.tie_word_embeddings && name == "lm_head.weight");
}

} // namespace

PretrainedConfig read_pretrained_config(const std::string& dir) {
  const auto path = detail::join_path(dir, "config.json");
  const auto json = detail::read_json(path, kLoadPretrained);
  TORCH_CHECK(
      json.is_object(), kLoadPretrained, ": ", path, " is not a JSON object");
  ConfigReader r(json, path);
  const auto type = r.string("model_type", "");
  if (type == "gpt2") {
    PretrainedConfig c;
    c.model_type = type;
    c.path = path;
    c.gpt2 = read_gpt2_config(dir);
    c.vocab_size = c.gpt2.vocab_size;
    c.hidden_size = c.gpt2.n_embd;
    c.intermediate_size =
        c.gpt2.n_inner > 0 ? c.gpt2.n_inner : 4 * c.gpt2.n_embd;
    c.num_hidden_layers = c.gpt2.n_layer;
    c.num_attention_heads = c.num_key_value_heads = c.gpt2.n_head;
    c.head_dim = c.gpt2.n_embd / c.gpt2.n_head;
    c.max_position_embeddings = c.gpt2.n_positions;
    c.rms_norm_eps = c.gpt2.layer_norm_epsilon;
    c.qkv_bias = c.proj_bias = c.mlp_bias = true;
    c.tie_word_embeddings = c.gpt2.tie_word_embeddings;
    c.bos_token_id = r.integer("bos_token_id", -1);
    if (c.gpt2.eos_token_id >= 0) {
      c.eos_token_ids.push_back(c.gpt2.eos_token_id);
    }
    return c;
  }
  TORCH_CHECK(
      family_defaults().count(type) > 0, kLoadPretrained, ": ", path,
      ": model_type \"", type,
      "\" is not supported (llama, mistral, qwen2 or gpt2)");
  try {
    return read_llama_family(r, type);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(
        false, kLoadPretrained, ": ", path, " is malformed: ", e.what());
  }
}

int64_t default_max_seq_len(const PretrainedConfig& c) {
  if (c.model_type == "gpt2") {
    return c.gpt2.n_positions;
  }
  int64_t n = std::min(c.max_position_embeddings, kDefaultMaxSeqLen);
  if (c.sliding_window > 0) {
    n = std::min(n, c.sliding_window);
  }
  return n;
}

GPTOptions pretrained_options(
    const PretrainedConfig& c,
    const Group& group,
    bool uneven,
    int64_t max_seq_len) {
  TORCHTP_CHECK(
      max_seq_len >= 0, kLoadPretrained, group, "max_seq_len (", max_seq_len,
      ") must not be negative");
  if (c.model_type == "gpt2") {
    TORCHTP_CHECK(
        max_seq_len == 0 || max_seq_len == c.gpt2.n_positions, kLoadPretrained,
        group, c.path, ": a GPT-2 holds n_positions (", c.gpt2.n_positions,
        ") positions, its position table's rows; got "
        "max_seq_len ",
        max_seq_len);
    return gpt2_options(c.gpt2, group, uneven);
  }
  const int64_t n = max_seq_len > 0 ? max_seq_len : default_max_seq_len(c);
  TORCHTP_CHECK(
      n <= c.max_position_embeddings, kLoadPretrained, group, c.path,
      ": max_seq_len (", n, ") is larger than max_position_embeddings (",
      c.max_position_embeddings, ")");
  TORCHTP_CHECK(
      c.sliding_window == 0 || n <= c.sliding_window, kLoadPretrained, group,
      c.path, ": ", c.sliding_window_key, " is ", c.sliding_window,
      ", shorter than max_seq_len (", n,
      "): sliding-window attention is not implemented, so the context must "
      "fit in the window");
  return GPTOptions(c.vocab_size, n)
      .d_model(c.hidden_size)
      .num_heads(c.num_attention_heads)
      .num_kv_heads(c.num_key_value_heads)
      .head_dim(c.head_dim)
      .num_layers(c.num_hidden_layers)
      .ffn_hidden(c.intermediate_size)
      .norm(NormType::rms_norm)
      .layer_norm_eps(c.rms_norm_eps)
      .rotary(c.rotary)
      .gated_mlp(true)
      .activation(Activation::silu)
      .bias(c.mlp_bias)
      .qkv_bias(c.qkv_bias)
      .proj_bias(c.proj_bias)
      .tie_embeddings(c.tie_word_embeddings)
      .vocab_pad_multiple(detail::loaded_vocab_pad_multiple(group, uneven))
      .uneven(uneven)
      .group(group);
}

GPT load_pretrained(
    const std::string& dir, const LoadPretrainedOptions& options) {
  const Group group = detail::group_or_default(options.group());
  TORCHTP_CHECK(
      options.block_bytes() > 0, kLoadPretrained, group,
      "block_bytes must be positive");
  const auto config = read_pretrained_config(dir);
  if (config.model_type == "gpt2") {
    pretrained_options(config, group, options.uneven(), options.max_seq_len());
    return load_gpt2(
        dir, LoadGPT2Options()
                 .group(group)
                 .dtype(options.dtype())
                 .block_bytes(options.block_bytes())
                 .uneven(options.uneven())
                 .int8_weights(options.int8_weights()));
  }
  const auto gpt_options =
      pretrained_options(config, group, options.uneven(), options.max_seq_len())
          .dtype(options.dtype());
  // Open and check every file, and find every tensor, before the model
  // takes memory.
  detail::HFFiles files(dir, group, kLoadPretrained);
  const auto from = llama_sources(config);
  std::string model = "a " + config.model_type +
                      " of config.json (num_hidden_layers " +
                      std::to_string(config.num_hidden_layers);
  model += config.tie_word_embeddings ? ", tied" : "";
  model += config.qkv_bias ? ", q/k/v biases" : "";
  model += config.proj_bias ? ", o_proj bias" : "";
  model += config.mlp_bias ? ", MLP biases" : "";
  detail::check_tensors(
      files, from,
      [&](const std::string& name) { return llama_skipped(name, config); },
      model + ")");
  return detail::load_gpt(
      gpt_options, files, from, static_cast<uint64_t>(options.block_bytes()),
      options.int8_weights());
}

} // namespace torchtp
