// random_gpt2: writes a model directory with random weights in Hugging
// Face's layout, to try `generate --model` and `bench_generate --model`
// without downloading a checkpoint. `--family` picks the layout:
//
// - gpt2 (default): config.json + model.safetensors, Conv1D weights stored
//   [in, out]; the default shape is GPT-2 small's (124M parameters).
// - llama, mistral, qwen2: LlamaForCausalLM's names (model.embed_tokens,
//   model.layers.N.self_attn.{q,k,v,o}_proj, ..mlp.{gate,up,down}_proj,
//   the RMSNorms, model.norm, lm_head unless --tied); Qwen2 with q/k/v
//   biases. Grouped-query with --kv-heads, --head-dim, --ffn.
//
// The name stays random_gpt2 (it writes every family now) because scripts,
// tests and docs call it by that name.
//
//   ./random_gpt2 --out /tmp/gpt2-random
//   ./random_gpt2 --family qwen2 --out /tmp/qwen2-random --vocab 1000 \
//       --embd 128 --layers 4 --heads 8 --kv-heads 2 --ffn 256 --tied \
//       --dtype bfloat16 --shards 2
//   torchtp-run --nproc-per-node 2 ./generate --model /tmp/qwen2-random \
//       --prompt-ids 1,2,3 --max-new-tokens 16 --greedy
//
// --tokenizer DIR copies a real tokenizer next to the weights (and sizes
// the vocabulary to it), so `generate --prompt TEXT` works.
//
// The same --seed gives the same weights whatever --shards and --dtype
// (rounded): the tensors are drawn in one order, and each file is written
// as soon as its tensors are drawn, so memory holds one file's worth.

#include <torchtp/dtype_names.h>
#include <torchtp/safetensors.h>
#include <torchtp/tokenizer.h>

#include "guarded_main.h"

#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace {

struct Args {
  std::string out;
  std::string family = "gpt2";
  int64_t vocab = 50257, positions = 1024, embd = 768, layers = 12;
  int64_t heads = 12, kv_heads = 0, ffn = 0, head_dim = 0;
  bool tied = false, untied = false;
  double rope_theta = 10000.0;
  std::string dtype = "float32";
  int64_t shards = 1;
  std::string tokenizer;
  double std_dev = 0.02;
  uint64_t seed = 0;
};

// A tensor to draw: its name, shape and how.
struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  enum Kind { normal, norm_weight, norm_bias } kind = normal;
};

// GPT-2's tensors, as GPT2Model saves them.
std::vector<Spec> gpt2_specs(const Args& a, int64_t ffn, bool tied) {
  std::vector<Spec> s;
  // LayerNorms near the identity, but not exactly: a loader that mixed up
  // weight and bias would show.
  auto norm = [&](const std::string& name) {
    s.push_back({name + ".weight", {a.embd}, Spec::norm_weight});
    s.push_back({name + ".bias", {a.embd}, Spec::norm_bias});
  };
  auto conv1d = [&](const std::string& name, int64_t in, int64_t out) {
    s.push_back({name + ".weight", {in, out}});
    s.push_back({name + ".bias", {out}});
  };
  s.push_back({"wte.weight", {a.vocab, a.embd}});
  s.push_back({"wpe.weight", {a.positions, a.embd}});
  for (int64_t i = 0; i < a.layers; ++i) {
    const auto h = "h." + std::to_string(i) + ".";
    norm(h + "ln_1");
    conv1d(h + "attn.c_attn", a.embd, 3 * a.embd);
    conv1d(h + "attn.c_proj", a.embd, a.embd);
    norm(h + "ln_2");
    conv1d(h + "mlp.c_fc", a.embd, ffn);
    conv1d(h + "mlp.c_proj", ffn, a.embd);
  }
  norm("ln_f");
  if (!tied) {
    s.push_back({"lm_head.weight", {a.vocab, a.embd}});
  }
  return s;
}

// A Llama-layout model's tensors, as LlamaForCausalLM saves them.
std::vector<Spec> llama_specs(
    const Args& a, int64_t ffn, int64_t kv_heads, int64_t head_dim, bool tied) {
  std::vector<Spec> s;
  const int64_t q = a.heads * head_dim, kv = kv_heads * head_dim;
  const bool qkv_bias = a.family == "qwen2";
  s.push_back({"model.embed_tokens.weight", {a.vocab, a.embd}});
  for (int64_t i = 0; i < a.layers; ++i) {
    const auto at = "model.layers." + std::to_string(i) + ".";
    const auto attn = at + "self_attn.", mlp = at + "mlp.";
    s.push_back({at + "input_layernorm.weight", {a.embd}, Spec::norm_weight});
    s.push_back({attn + "q_proj.weight", {q, a.embd}});
    s.push_back({attn + "k_proj.weight", {kv, a.embd}});
    s.push_back({attn + "v_proj.weight", {kv, a.embd}});
    if (qkv_bias) {
      s.push_back({attn + "q_proj.bias", {q}});
      s.push_back({attn + "k_proj.bias", {kv}});
      s.push_back({attn + "v_proj.bias", {kv}});
    }
    s.push_back({attn + "o_proj.weight", {a.embd, q}});
    s.push_back(
        {at + "post_attention_layernorm.weight", {a.embd}, Spec::norm_weight});
    s.push_back({mlp + "gate_proj.weight", {ffn, a.embd}});
    s.push_back({mlp + "up_proj.weight", {ffn, a.embd}});
    s.push_back({mlp + "down_proj.weight", {a.embd, ffn}});
  }
  s.push_back({"model.norm.weight", {a.embd}, Spec::norm_weight});
  if (!tied) {
    s.push_back({"lm_head.weight", {a.vocab, a.embd}});
  }
  return s;
}

nlohmann::json config_of(
    const Args& a,
    int64_t ffn,
    int64_t kv_heads,
    int64_t head_dim,
    bool tied,
    const std::string& dtype) {
  if (a.family == "gpt2") {
    return {
        {"model_type", "gpt2"},
        {"architectures", {"GPT2LMHeadModel"}},
        {"vocab_size", a.vocab},
        {"n_positions", a.positions},
        {"n_ctx", a.positions},
        {"n_embd", a.embd},
        {"n_layer", a.layers},
        {"n_head", a.heads},
        {"n_inner", a.ffn > 0 ? nlohmann::json(ffn) : nlohmann::json()},
        {"activation_function", "gelu_new"},
        {"layer_norm_epsilon", 1e-5},
        {"tie_word_embeddings", tied},
        {"eos_token_id", a.vocab - 1},
        {"bos_token_id", a.vocab - 1}};
  }
  const std::string arch = a.family == "llama"     ? "LlamaForCausalLM"
                           : a.family == "mistral" ? "MistralForCausalLM"
                                                   : "Qwen2ForCausalLM";
  nlohmann::json c = {{"model_type", a.family},
                      {"architectures", {arch}},
                      {"vocab_size", a.vocab},
                      {"hidden_size", a.embd},
                      {"intermediate_size", ffn},
                      {"num_hidden_layers", a.layers},
                      {"num_attention_heads", a.heads},
                      {"num_key_value_heads", kv_heads},
                      {"head_dim", head_dim},
                      {"max_position_embeddings", a.positions},
                      {"rms_norm_eps", 1e-6},
                      {"rope_theta", a.rope_theta},
                      {"rope_scaling", nullptr},
                      {"hidden_act", "silu"},
                      {"tie_word_embeddings", tied},
                      {"bos_token_id", a.vocab - 2},
                      {"eos_token_id", a.vocab - 1},
                      {"torch_dtype", dtype}};
  if (a.family == "llama") {
    c["attention_bias"] = false;
    c["mlp_bias"] = false;
  } else if (a.family == "mistral") {
    c["sliding_window"] = nullptr;
  } else {
    c["use_sliding_window"] = false;
    c["sliding_window"] = nullptr;
    c["max_window_layers"] = a.layers;
  }
  return c;
}

int run(int argc, char** argv) {
  Args a;
  CLI::App app(
      "Write a model directory with random weights in Hugging Face's layout "
      "(GPT-2, Llama, Mistral or Qwen2)");
  app.add_option("--out", a.out, "directory to create")->required();
  app.add_option("--family", a.family, "gpt2, llama, mistral or qwen2")
      ->check(CLI::IsMember({"gpt2", "llama", "mistral", "qwen2"}))
      ->capture_default_str();
  auto* vocab = app.add_option("--vocab", a.vocab, "vocab_size")
                    ->capture_default_str();
  app.add_option(
         "--tokenizer", a.tokenizer,
         "copy this directory's tokenizer files (tokenizer.json, "
         "tokenizer_config.json, vocab.json, merges.txt) into --out, so "
         "generate takes --prompt text; without --vocab, vocab_size is the "
         "tokenizer's rounded up to a multiple of 64")
      ->check(CLI::ExistingDirectory);
  app.add_option(
         "--positions", a.positions,
         "n_positions (GPT-2) or max_position_embeddings")
      ->capture_default_str();
  app.add_option("--embd", a.embd, "n_embd / hidden_size")
      ->capture_default_str();
  app.add_option("--layers", a.layers, "n_layer / num_hidden_layers")
      ->capture_default_str();
  app.add_option("--heads", a.heads, "n_head / num_attention_heads")
      ->capture_default_str();
  app.add_option(
         "--kv-heads", a.kv_heads,
         "num_key_value_heads (Llama families; 0: --heads)")
      ->capture_default_str();
  app.add_option("--ffn", a.ffn, "n_inner / intermediate_size (0: 4 x --embd)")
      ->capture_default_str();
  app.add_option(
         "--head-dim", a.head_dim,
         "head_dim (Llama families; 0: --embd / --heads)")
      ->capture_default_str();
  auto* tied = app.add_flag(
      "--tied", a.tied,
      "tie_word_embeddings: no lm_head.weight (default for gpt2)");
  app.add_flag(
         "--untied", a.untied,
         "an lm_head.weight of its own (default for the Llama families)")
      ->excludes(tied);
  app.add_option("--rope-theta", a.rope_theta, "rope_theta (Llama families)")
      ->capture_default_str();
  app.add_option("--dtype", a.dtype, "dtype of the file's tensors")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}))
      ->capture_default_str();
  app.add_option(
         "--shards", a.shards,
         "files: more than 1 writes model-0000K-of-0000N.safetensors and "
         "model.safetensors.index.json")
      ->check(CLI::Range(1, 99999))
      ->capture_default_str();
  app.add_option("--std", a.std_dev, "standard deviation of the weights")
      ->capture_default_str();
  app.add_option("--seed", a.seed, "random seed")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  if (!a.tokenizer.empty() && vocab->count() == 0) {
    const auto tokens =
        torchtp::Tokenizer::from_directory(a.tokenizer).vocab_size();
    a.vocab = (tokens + 63) / 64 * 64;
  }
  const bool gpt2 = a.family == "gpt2";
  const bool is_tied = gpt2 ? !a.untied : a.tied;
  const int64_t ffn = a.ffn > 0 ? a.ffn : 4 * a.embd;
  const int64_t kv_heads = a.kv_heads > 0 ? a.kv_heads : a.heads;
  TORCH_CHECK(
      a.vocab > 2 && a.positions > 0 && a.embd > 0 && a.layers >= 0 &&
          a.heads > 0 && ffn > 0,
      "random_gpt2: sizes must be positive (vocab above 2)");
  TORCH_CHECK(
      a.head_dim > 0 || a.embd % a.heads == 0, "random_gpt2: --embd (", a.embd,
      ") must be divisible by --heads (", a.heads,
      ") unless --head-dim is given");
  TORCH_CHECK(
      !gpt2 || (a.kv_heads == 0 && a.head_dim == 0),
      "random_gpt2: --kv-heads and --head-dim are for the Llama families");
  TORCH_CHECK(
      a.heads % kv_heads == 0, "random_gpt2: --heads (", a.heads,
      ") must be a multiple of --kv-heads (", kv_heads, ")");
  const int64_t head_dim = a.head_dim > 0 ? a.head_dim : a.embd / a.heads;
  const auto dtype = torchtp::dtype_from_name(a.dtype);

  const auto specs = gpt2 ? gpt2_specs(a, ffn, is_tied)
                          : llama_specs(a, ffn, kv_heads, head_dim, is_tied);
  // Files of about equal size, each a run of consecutive tensors.
  uint64_t total = 0;
  for (const auto& s : specs) {
    uint64_t n = 1;
    for (int64_t d : s.shape) {
      n *= static_cast<uint64_t>(d);
    }
    total += n * torch::elementSize(dtype);
  }
  const int64_t files = std::min<int64_t>(a.shards, specs.size());
  auto file_name = [&](int64_t f) {
    if (files == 1) {
      return std::string("model.safetensors");
    }
    char name[64];
    std::snprintf(
        name, sizeof(name), "model-%05lld-of-%05lld.safetensors",
        static_cast<long long>(f + 1), static_cast<long long>(files));
    return std::string(name);
  };

  std::filesystem::create_directories(a.out);
  torch::manual_seed(a.seed);
  nlohmann::json weight_map = nlohmann::json::object();
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  uint64_t written = 0, in_file = 0;
  int64_t file = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& s = specs[i];
    auto t = torch::randn(s.shape);
    t = s.kind == Spec::norm_weight ? 1 + t * 0.1
        : s.kind == Spec::norm_bias ? t * 0.1
                                    : t * a.std_dev;
    tensors.emplace_back(s.name, t.to(dtype));
    weight_map[s.name] = file_name(file);
    in_file += t.numel() * torch::elementSize(dtype);
    // Close this file when it holds its share, or at the end.
    const bool last = i + 1 == specs.size();
    if (last ||
        (file + 1 < files && (written + in_file) * files >=
                                 total * static_cast<uint64_t>(file + 1))) {
      torchtp::write_safetensors(
          a.out + "/" + file_name(file), tensors, {{"format", "pt"}});
      tensors.clear();
      written += in_file;
      in_file = 0;
      ++file;
    }
  }
  if (files > 1) {
    std::ofstream(a.out + "/model.safetensors.index.json")
        << nlohmann::json({{"metadata", {{"total_size", total}}},
                           {"weight_map", weight_map}})
               .dump(2)
        << "\n";
  }
  std::ofstream(a.out + "/config.json")
      << config_of(a, ffn, kv_heads, head_dim, is_tied, a.dtype).dump(2)
      << "\n";
  for (const char* name : {"tokenizer.json", "tokenizer_config.json",
                           "special_tokens_map.json", "vocab.json",
                           "merges.txt"}) {
    const auto from = std::filesystem::path(a.tokenizer) / name;
    if (!a.tokenizer.empty() && std::filesystem::exists(from)) {
      std::filesystem::copy_file(
          from, std::filesystem::path(a.out) / name,
          std::filesystem::copy_options::overwrite_existing);
    }
  }
  std::printf(
      "wrote %s: %s config.json and %lld safetensors file%s (%zu tensors, "
      "%.1f MB)\n",
      a.out.c_str(), a.family.c_str(), static_cast<long long>(file),
      file == 1 ? "" : "s", specs.size(), total / 1e6);
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "random_gpt2", [&] { return run(argc, argv); });
}
