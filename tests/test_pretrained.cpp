// Loading Hugging Face Llama, Mistral and Qwen2 checkpoints: small random
// directories are written here in Hugging Face's layout (config.json via
// nlohmann::json, tensors via write_safetensors, under LlamaForCausalLM's
// names), loaded at the world size with load_pretrained, and compared with
// a GPT built on one rank (Group::self()) from options written here and the
// same full weights copied in by name (q/k/v and gate/up concatenated here).
// Then the directories are broken one way at a time, and every refusal is
// checked to name the file, the tensor or the key.

#include "test_util.h"

#include "detail/read_counter.h"

#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include <malloc.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

// Named, not anonymous: the parametrised fixture below derives from a
// template of it, and this file is compiled inside a unity unit.
namespace pretrained_test {

// A Llama-layout checkpoint's shape and family.
struct HFShape {
  std::string name;
  std::string model_type;
  int64_t hidden = 32, inter = 24, layers = 2, heads = 8, kv_heads = 2;
  // 0: no head_dim key (hidden / heads).
  int64_t head_dim = 0;
  bool tied = false;
  // Llama's attention_bias and mlp_bias; Qwen2 always has q/k/v biases.
  bool attention_bias = false, mlp_bias = false;
  double theta = 10000.0, eps = 1e-6;
  // rope_scaling, or null.
  nlohmann::json rope_scaling = nullptr;

  int64_t hd() const {
    return head_dim > 0 ? head_dim : hidden / heads;
  }
  bool qkv_bias() const {
    return model_type == "qwen2" || attention_bias;
  }
};

std::ostream& operator<<(std::ostream& os, const HFShape& s) {
  return os << s.name;
}

} // namespace pretrained_test

namespace {

using pretrained_test::HFShape;
namespace fs = std::filesystem;
using torchtp::testing::all_close;
using torchtp::testing::raises_with;
using torchtp::testing::world;

// A vocabulary no world size divides (padded to 128 for the split); 8
// query heads over 2 key/value heads, so 4 ranks hold each twice.
constexpr int64_t kHfVocab = 101, kHfPositions = 32, kHfSeq = 9;

using HFTensors = std::map<std::string, torch::Tensor>;

// The GPT parameter each stored tensor belongs to, with the stored tensors
// that make it, concatenated along dim 0 in this order: the test's own
// statement of the layout, used to build the reference and to poison.
std::map<std::string, std::vector<std::string>> hf_param_parts(
    const HFShape& s) {
  std::map<std::string, std::vector<std::string>> out;
  out["token_embedding.weight"] = {"model.embed_tokens.weight"};
  for (int64_t i = 0; i < s.layers; ++i) {
    const auto to = "layers." + std::to_string(i) + ".";
    const auto at = "model.layers." + std::to_string(i) + ".";
    const auto attn = at + "self_attn.", mlp = at + "mlp.";
    out[to + "ln1.weight"] = {at + "input_layernorm.weight"};
    out[to + "ln2.weight"] = {at + "post_attention_layernorm.weight"};
    out[to + "attention.qkv.weight"] = {
        attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"};
    out[to + "attention.proj.weight"] = {attn + "o_proj.weight"};
    out[to + "mlp.fc1.weight"] = {
        mlp + "gate_proj.weight", mlp + "up_proj.weight"};
    out[to + "mlp.fc2.weight"] = {mlp + "down_proj.weight"};
    if (s.qkv_bias()) {
      out[to + "attention.qkv.bias"] = {
          attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"};
    }
    if (s.attention_bias) {
      out[to + "attention.proj.bias"] = {attn + "o_proj.bias"};
    }
    if (s.mlp_bias) {
      out[to + "mlp.fc1.bias"] = {mlp + "gate_proj.bias", mlp + "up_proj.bias"};
      out[to + "mlp.fc2.bias"] = {mlp + "down_proj.bias"};
    }
  }
  out["final_norm.weight"] = {"model.norm.weight"};
  if (!s.tied) {
    out["lm_head.weight"] = {"lm_head.weight"};
  }
  return out;
}

// Random tensors of `s` under Hugging Face's names and shapes, float32.
HFTensors random_hf(const HFShape& s, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t q = s.heads * s.hd(), kv = s.kv_heads * s.hd();
  HFTensors t;
  auto normal = [&](const std::string& name, std::vector<int64_t> shape) {
    const double fan_in = static_cast<double>(shape.back());
    t[name] = torch::randn(shape) / std::sqrt(fan_in);
  };
  auto norm = [&](const std::string& name) {
    t[name] = 1 + torch::randn({s.hidden}) / 10;
  };
  auto bias = [&](const std::string& name, int64_t n) {
    t[name] = torch::randn({n}) / 10;
  };
  t["model.embed_tokens.weight"] = torch::randn({kHfVocab, s.hidden});
  for (int64_t i = 0; i < s.layers; ++i) {
    const auto at = "model.layers." + std::to_string(i) + ".";
    const auto attn = at + "self_attn.", mlp = at + "mlp.";
    norm(at + "input_layernorm.weight");
    normal(attn + "q_proj.weight", {q, s.hidden});
    normal(attn + "k_proj.weight", {kv, s.hidden});
    normal(attn + "v_proj.weight", {kv, s.hidden});
    normal(attn + "o_proj.weight", {s.hidden, q});
    if (s.qkv_bias()) {
      bias(attn + "q_proj.bias", q);
      bias(attn + "k_proj.bias", kv);
      bias(attn + "v_proj.bias", kv);
    }
    if (s.attention_bias) {
      bias(attn + "o_proj.bias", s.hidden);
    }
    norm(at + "post_attention_layernorm.weight");
    normal(mlp + "gate_proj.weight", {s.inter, s.hidden});
    normal(mlp + "up_proj.weight", {s.inter, s.hidden});
    normal(mlp + "down_proj.weight", {s.hidden, s.inter});
    if (s.mlp_bias) {
      bias(mlp + "gate_proj.bias", s.inter);
      bias(mlp + "up_proj.bias", s.inter);
      bias(mlp + "down_proj.bias", s.hidden);
    }
  }
  norm("model.norm.weight");
  if (!s.tied) {
    normal("lm_head.weight", {kHfVocab, s.hidden});
  }
  return t;
}

nlohmann::json hf_config(const HFShape& s) {
  nlohmann::json c = {
      {"model_type", s.model_type},
      {"architectures", {"LlamaForCausalLM"}},
      {"vocab_size", kHfVocab},
      {"hidden_size", s.hidden},
      {"intermediate_size", s.inter},
      {"num_hidden_layers", s.layers},
      {"num_attention_heads", s.heads},
      {"num_key_value_heads", s.kv_heads},
      {"max_position_embeddings", kHfPositions},
      {"rms_norm_eps", s.eps},
      {"rope_theta", s.theta},
      {"rope_scaling", s.rope_scaling},
      {"hidden_act", "silu"},
      {"tie_word_embeddings", s.tied},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
      {"torch_dtype", "float32"}};
  if (s.head_dim > 0) {
    c["head_dim"] = s.head_dim;
  }
  if (s.model_type == "llama") {
    c["attention_bias"] = s.attention_bias;
    c["mlp_bias"] = s.mlp_bias;
  }
  if (s.model_type == "mistral") {
    c["sliding_window"] = nullptr;
  }
  if (s.model_type == "qwen2") {
    c["use_sliding_window"] = false;
    c["sliding_window"] = 4;
    c["max_window_layers"] = 0;
  }
  return c;
}

void write_hf_config(const std::string& dir, const nlohmann::json& config) {
  std::ofstream(dir + "/config.json") << config.dump(2);
}

// model.safetensors with every floating-point tensor in `dtype`.
void write_hf_single(
    const std::string& dir,
    const HFTensors& t,
    torch::Dtype dtype = torch::kFloat) {
  std::vector<std::pair<std::string, torch::Tensor>> entries;
  for (const auto& [name, tensor] : t) {
    entries.emplace_back(
        name, tensor.is_floating_point() ? tensor.to(dtype) : tensor);
  }
  torchtp::write_safetensors(dir + "/model.safetensors", entries);
}

// Two files listed by model.safetensors.index.json, as save_pretrained
// writes a sharded checkpoint: tensors alternate between the files, so
// q/k/v and gate/up parts of one parameter are in different files.
void write_hf_index(const std::string& dir, const HFTensors& t) {
  std::vector<std::pair<std::string, torch::Tensor>> files[2];
  nlohmann::json map = nlohmann::json::object();
  int next = 0;
  for (const auto& [name, tensor] : t) {
    const int f = next++ % 2;
    files[f].emplace_back(name, tensor);
    map[name] = "model-0000" + std::to_string(f + 1) + "-of-00002.safetensors";
  }
  for (int f = 0; f < 2; ++f) {
    torchtp::write_safetensors(
        dir + "/model-0000" + std::to_string(f + 1) + "-of-00002.safetensors",
        files[f]);
  }
  std::ofstream(dir + "/model.safetensors.index.json")
      << nlohmann::json(
             {{"metadata", {{"total_size", 0}}}, {"weight_map", map}})
             .dump(2);
}

// The unsharded model: a GPT on this rank alone, its options written here
// from the shape (not from pretrained_options), no vocabulary padding, and
// the full weights of `t` (rounded to `dtype`) copied in by name.
torchtp::GPT hf_reference(
    const HFShape& s, const HFTensors& t, torch::Dtype dtype) {
  torchtp::RotaryOptions rotary;
  rotary.theta(s.theta);
  if (s.rope_scaling.is_object() &&
      s.rope_scaling.value("rope_type", "") == "llama3") {
    rotary.scaling(torchtp::RopeScalingType::llama3)
        .factor(s.rope_scaling["factor"].get<double>())
        .low_freq_factor(s.rope_scaling["low_freq_factor"].get<double>())
        .high_freq_factor(s.rope_scaling["high_freq_factor"].get<double>())
        .original_max_position_embeddings(
            s.rope_scaling["original_max_position_embeddings"].get<int64_t>());
  }
  const auto self = torchtp::Group::self();
  torchtp::GPT ref(torchtp::GPTOptions(kHfVocab, kHfPositions)
                       .d_model(s.hidden)
                       .num_heads(s.heads)
                       .num_kv_heads(s.kv_heads)
                       .head_dim(s.hd())
                       .num_layers(s.layers)
                       .ffn_hidden(s.inter)
                       .norm(torchtp::NormType::rms_norm)
                       .layer_norm_eps(s.eps)
                       .rotary(rotary)
                       .gated_mlp(true)
                       .activation(torchtp::Activation::silu)
                       .bias(s.mlp_bias)
                       .qkv_bias(s.qkv_bias())
                       .proj_bias(s.attention_bias)
                       .tie_embeddings(s.tied)
                       .vocab_pad_multiple(1)
                       .group(self)
                       .dtype(dtype));
  const auto parts = hf_param_parts(s);
  torch::NoGradGuard no_grad;
  for (auto& p : ref->named_parameters()) {
    std::vector<torch::Tensor> stored;
    for (const auto& name : parts.at(p.key())) {
      stored.push_back(t.at(name));
    }
    p.value().copy_(torch::cat(stored, 0));
  }
  return ref;
}

// Even splits where the world size divides the 8 query heads (the sizes
// CTest runs), uneven ones elsewhere (3 or 5 ranks, run by hand).
bool hf_uneven() {
  return 8 % world().size() != 0;
}

torch::Tensor hf_prompt_ids() {
  torch::manual_seed(3);
  return torch::randint(kHfVocab, {2, kHfSeq}, torch::kLong);
}

std::vector<HFShape> hf_shapes() {
  std::vector<HFShape> out;
  // Llama 3.x: grouped-query heads, head_dim not hidden / heads, llama3
  // rope scaling, untied.
  HFShape llama{"llama_gqa_llama3_scaling", "llama"};
  llama.head_dim = 6;
  llama.theta = 500000;
  llama.rope_scaling = {
      {"rope_type", "llama3"},
      {"factor", 8.0},
      {"low_freq_factor", 1.0},
      {"high_freq_factor", 4.0},
      {"original_max_position_embeddings", 16}};
  out.push_back(llama);
  // Llama with attention_bias and mlp_bias, multi-head, tied.
  HFShape biased{"llama_biases_tied", "llama"};
  biased.kv_heads = 8;
  biased.attention_bias = biased.mlp_bias = true;
  biased.tied = true;
  biased.eps = 1e-5;
  out.push_back(biased);
  // Mistral: grouped-query, no sliding window.
  out.push_back({"mistral_gqa", "mistral"});
  // Qwen2: q/k/v biases, multi-query, tied (Qwen2.5-0.5B's layout).
  HFShape qwen{"qwen2_biases_mqa_tied", "qwen2"};
  qwen.kv_heads = 1;
  qwen.tied = true;
  qwen.theta = 1000000;
  out.push_back(qwen);
  return out;
}

} // namespace

// Outside the anonymous namespace: gtest derives each test from it.
class PretrainedFiles : public torchtp::testing::SharedDirTest {
 protected:
  PretrainedFiles() : SharedDirTest("pretrained") {}
  torchtp::LoadPretrainedOptions opts(torch::Dtype dtype, int64_t block = 256) {
    return torchtp::LoadPretrainedOptions()
        .group(world())
        .dtype(dtype)
        .block_bytes(block)
        .uneven(hf_uneven());
  }
  // Logits in float64 within 1e-10 of the unsharded model, and the same
  // greedy tokens.
  void expect_equals_reference(
      const HFShape& s, const HFTensors& t, torch::Dtype dtype, int64_t block) {
    auto loaded = torchtp::load_pretrained(dir_, opts(dtype, block));
    auto ref = hf_reference(s, t, dtype);
    EXPECT_EQ(loaded->max_seq_len(), kHfPositions);
    c10::InferenceMode inference;
    const auto ids = hf_prompt_ids();
    auto logits = loaded->full_logits(ids);
    EXPECT_EQ(logits.scalar_type(), dtype);
    EXPECT_TRUE(all_close(logits, ref->full_logits(ids)));
    auto options = torchtp::GenerateOptions().max_new_tokens(8);
    std::vector<std::vector<int64_t>> prompts = {{5, 7, 11}, {13, 17, 19, 23}};
    EXPECT_EQ(
        torchtp::generate(*loaded, prompts, options).tokens,
        torchtp::generate(*ref, prompts, options).tokens);
  }
};

class PretrainedLoader
    : public PretrainedFiles,
      public ::testing::WithParamInterface<pretrained_test::HFShape> {};

TEST_P(PretrainedLoader, LogitsAndGreedyTokensEqualTheUnshardedModel) {
  const auto s = GetParam();
  const auto t = random_hf(s, 7);
  on_rank0([&] {
    write_hf_config(dir_, hf_config(s));
    // inv_freq buffers, as older transformers saved them, are skipped.
    auto stored = t;
    stored["model.layers.0.self_attn.rotary_emb.inv_freq"] =
        torch::ones({s.hd() / 2});
    write_hf_single(dir_, stored);
  });
  // Blocks of 256 bytes: every tensor in several reads.
  expect_equals_reference(s, t, torch::kDouble, 256);
  expect_equals_reference(s, t, torch::kFloat, 8 << 20);
}

INSTANTIATE_TEST_SUITE_P(
    Families,
    PretrainedLoader,
    ::testing::ValuesIn(hf_shapes()),
    [](const auto& info) { return info.param.name; });

namespace {
HFShape mistral_shape() {
  return {"mistral", "mistral"};
}
} // namespace

TEST_F(PretrainedFiles, ATwoFileIndexWithATiedHeadSavedAnywayLoads) {
  auto s = hf_shapes()[3]; // Qwen2, tied
  const auto t = random_hf(s, 8);
  on_rank0([&] {
    write_hf_config(dir_, hf_config(s));
    auto stored = t;
    stored["lm_head.weight"] = t.at("model.embed_tokens.weight");
    write_hf_index(dir_, stored);
  });
  expect_equals_reference(s, t, torch::kDouble, 100);
}

TEST_F(PretrainedFiles, ReducedPrecisionFilesLoadAsTheirRoundedWeights) {
  const auto s = hf_shapes()[0];
  const auto t = random_hf(s, 9);
  for (auto file_dtype : {torch::kBFloat16, torch::kHalf}) {
    SCOPED_TRACE(c10::toString(file_dtype));
    on_rank0([&] {
      write_hf_config(dir_, hf_config(s));
      write_hf_single(dir_, t, file_dtype);
    });
    auto loaded = torchtp::load_pretrained(dir_, opts(torch::kFloat, 64));
    // The rounded weights, widened: what each parameter's shard must hold.
    HFTensors rounded;
    for (const auto& [name, tensor] : t) {
      rounded[name] = tensor.to(file_dtype).to(torch::kFloat);
    }
    auto ref = hf_reference(s, rounded, torch::kFloat);
    const auto specs = torchtp::shard_specs(*loaded);
    const auto ref_params = ref->named_parameters();
    for (const auto& p : loaded->named_parameters()) {
      EXPECT_EQ(p.value().scalar_type(), torch::kFloat);
      auto full = ref_params[p.key()];
      if (p.key() == "token_embedding.weight" || p.key() == "lm_head.weight") {
        // Padded rows are zeros.
        const int64_t padded = torchtp::full_shape(
            p.value().sizes(), specs.at(p.key()), world())[0];
        full =
            torch::cat({full, torch::zeros({padded - kHfVocab, s.hidden})}, 0);
      }
      EXPECT_TRUE(torch::equal(
          p.value(),
          torchtp::shard_of(full, specs.at(p.key()), world(), p.key())))
          << p.key();
    }
    world().barrier();
  }
}

// int8_weights quantizes each weight as it is loaded (a bfloat16 file's
// weight read as bfloat16, not widened first): the same int8 weights,
// scales and float parameters as quantize_int8 applied to the float32
// model loaded from the same file, untied and tied.
TEST_F(PretrainedFiles, Int8WeightsEqualQuantizingTheLoadedModel) {
  for (const auto& s : {hf_shapes()[0], hf_shapes()[3]}) {
    const auto t = random_hf(s, 10);
    for (auto file_dtype : {torch::kFloat, torch::kBFloat16}) {
      SCOPED_TRACE(s.name + " " + c10::toString(file_dtype));
      on_rank0([&] {
        write_hf_config(dir_, hf_config(s));
        write_hf_single(dir_, t, file_dtype);
      });
      auto loaded =
          torchtp::load_pretrained(dir_, opts(torch::kFloat, 64).int8_weights(true));
      auto want = torchtp::load_pretrained(dir_, opts(torch::kFloat, 64));
      torchtp::quantize_int8(*want);
      auto want_params = want->named_parameters();
      auto want_buffers = want->named_buffers();
      int64_t int8 = 0;
      for (const auto& p : loaded->named_parameters()) {
        ASSERT_TRUE(want_params.contains(p.key())) << p.key();
        const auto& w = want_params[p.key()];
        int8 += p.value().scalar_type() == torch::kChar;
        EXPECT_EQ(p.value().scalar_type(), w.scalar_type()) << p.key();
        EXPECT_TRUE(torch::equal(p.value(), w)) << p.key();
      }
      for (const auto& b : loaded->named_buffers()) {
        ASSERT_TRUE(want_buffers.contains(b.key())) << b.key();
        EXPECT_TRUE(torch::equal(b.value(), want_buffers[b.key()])) << b.key();
      }
      EXPECT_EQ(loaded->named_buffers().size(), want_buffers.size());
      // Per layer: q/k/v, output, gate/up, down; and the token table.
      EXPECT_EQ(int8, 4 * s.layers + 1 + (s.tied ? 0 : 1));
      world().barrier();
    }
  }
}

namespace {
// This process's anonymous resident memory (the heap and anonymous
// mappings; not the page cache a read leaves), in bytes.
int64_t resident_anonymous_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("RssAnon:", 0) == 0) {
      return std::stoll(line.substr(8)) * 1024;
    }
  }
  ADD_FAILURE() << "no RssAnon line in /proc/self/status";
  return 0;
}
} // namespace

// What an int8 load leaves resident is its int8 weights and their scales,
// not the float copies each weight passed through: those are freed one
// weight at a time, and malloc's heap would otherwise keep their pages (an
// int8 Qwen2.5-0.5B held ~300 MiB beyond its 473 MiB of weights).
TEST_F(PretrainedFiles, Int8LoadingKeepsOnlyTheInt8Weights) {
  HFShape s{"llama_wide", "llama"};
  s.hidden = 512;
  s.inter = 1536;
  s.layers = 6;
  s.heads = s.kv_heads = 8;
  const auto t = random_hf(s, 11);
  for (auto file_dtype : {torch::kFloat, torch::kBFloat16}) {
    SCOPED_TRACE(c10::toString(file_dtype));
    on_rank0([&] {
      write_hf_config(dir_, hf_config(s));
      write_hf_single(dir_, t, file_dtype);
    });
    // From a heap that keeps no free pages of its own (the writing's).
    malloc_trim(0);
    const int64_t before = resident_anonymous_bytes();
    auto loaded = torchtp::load_pretrained(
        dir_, opts(torch::kFloat, 1 << 20).int8_weights(true));
    const int64_t grown = resident_anonymous_bytes() - before;
    int64_t held = 0, float32_bytes = 0;
    for (const auto& p : loaded->named_parameters()) {
      held += p.value().numel() * p.value().element_size();
      float32_bytes += p.value().numel() * 4;
    }
    for (const auto& b : loaded->named_buffers()) {
      held += b.value().numel() * b.value().element_size();
    }
    // The model's own bytes, and 8 MiB for the allocator's and LibTorch's
    // bookkeeping; a quarter of float32's bytes plus a few percent.
    EXPECT_LE(grown, held + (int64_t{8} << 20))
        << "held " << held << " bytes; float32 would be " << float32_bytes;
    EXPECT_LT(held, float32_bytes * 3 / 10);
    loaded = nullptr;
    world().barrier();
  }
}

// Every rank loads from a directory of its own in which every value it
// should not read is NaN: its logits are still the unsharded model's, so it
// used nothing outside its shards; and the bytes it read from the file are
// its shards' values and the header, nothing more.
TEST_F(PretrainedFiles, EachRankReadsOnlyItsShards) {
  for (const auto& s : {hf_shapes()[0], hf_shapes()[3]}) {
    SCOPED_TRACE(s.name);
    const auto t = random_hf(s, 10);
    const auto mine = dir_ + "/rank" + std::to_string(world().rank());
    fs::create_directories(mine);
    // Which full indices this rank's shards hold, from the split of a
    // model at the world size.
    write_hf_config(mine, hf_config(s));
    auto config = torchtp::read_pretrained_config(mine);
    torchtp::GPT shaped(
        torchtp::pretrained_options(config, world(), hf_uneven()));
    const auto specs = torchtp::shard_specs(*shaped);
    HFTensors poisoned;
    int64_t poisoned_values = 0, kept_values = 0;
    for (const auto& [param, names] : hf_param_parts(s)) {
      const auto& spec = specs.at(param);
      auto local = shaped->named_parameters()[param];
      const auto full = torchtp::full_shape(local.sizes(), spec, world());
      auto keep = torch::zeros(full, torch::kBool);
      if (spec.is_replicated()) {
        keep.fill_(true);
      } else {
        for (const auto& r : torchtp::shard_ranges(
                 spec, full[spec.dim], world().size(), world().rank(), param)) {
          keep.narrow(spec.dim, r.from, r.length).fill_(true);
        }
      }
      int64_t row = 0;
      for (const auto& name : names) {
        const auto& value = t.at(name);
        auto mask = keep.narrow(0, row, value.size(0));
        row += value.size(0);
        poisoned[name] =
            torch::where(mask, value, torch::full_like(value, std::nan("")));
        poisoned_values += (~mask).sum().item<int64_t>();
        kept_values += mask.sum().item<int64_t>();
      }
    }
    if (world().size() > 1) {
      EXPECT_GT(poisoned_values, 0);
    }
    write_hf_single(mine, poisoned);
    uint64_t header = 0;
    std::ifstream(mine + "/model.safetensors", std::ios::binary)
        .read(reinterpret_cast<char*>(&header), sizeof(header));
    const uint64_t before = torchtp::detail::safetensors_bytes_read();
    auto loaded = torchtp::load_pretrained(mine, opts(torch::kDouble, 128));
    EXPECT_EQ(
        torchtp::detail::safetensors_bytes_read() - before,
        8 + header + kept_values * sizeof(float));
    auto ref = hf_reference(s, t, torch::kDouble);
    c10::InferenceMode inference;
    const auto ids = hf_prompt_ids();
    EXPECT_TRUE(all_close(loaded->full_logits(ids), ref->full_logits(ids)));
    world().barrier();
  }
}

TEST_F(PretrainedFiles, MissingKeysTakeTheDefaultsOfTheirFamily) {
  on_rank0([&] {
    for (const std::string type : {"llama", "mistral", "qwen2"}) {
      fs::create_directories(dir_ + "/" + type);
      write_hf_config(dir_ + "/" + type, {{"model_type", type}});
    }
  });
  auto llama = torchtp::read_pretrained_config(dir_ + "/llama");
  EXPECT_EQ(llama.vocab_size, 32000);
  EXPECT_EQ(llama.intermediate_size, 11008);
  EXPECT_EQ(llama.num_key_value_heads, 32);
  EXPECT_EQ(llama.head_dim, 128);
  EXPECT_EQ(llama.max_position_embeddings, 2048);
  EXPECT_EQ(llama.sliding_window, 0);
  EXPECT_EQ(llama.bos_token_id, 1);
  EXPECT_EQ(llama.eos_token_id(), 2);
  EXPECT_FALSE(llama.tie_word_embeddings || llama.qkv_bias || llama.mlp_bias);
  EXPECT_EQ(llama.rotary.theta(), 10000.0);
  auto mistral = torchtp::read_pretrained_config(dir_ + "/mistral");
  EXPECT_EQ(mistral.num_key_value_heads, 8);
  EXPECT_EQ(mistral.intermediate_size, 14336);
  EXPECT_EQ(mistral.max_position_embeddings, 131072);
  EXPECT_EQ(mistral.sliding_window, 4096);
  EXPECT_EQ(torchtp::default_max_seq_len(mistral), 4096);
  auto qwen = torchtp::read_pretrained_config(dir_ + "/qwen2");
  EXPECT_EQ(qwen.vocab_size, 151936);
  EXPECT_EQ(qwen.num_key_value_heads, 32);
  EXPECT_EQ(qwen.intermediate_size, 22016);
  EXPECT_EQ(qwen.max_position_embeddings, 32768);
  EXPECT_TRUE(qwen.qkv_bias);
  EXPECT_FALSE(qwen.proj_bias || qwen.mlp_bias);
  EXPECT_EQ(qwen.sliding_window, 0); // use_sliding_window false
  EXPECT_EQ(qwen.bos_token_id, -1);
  EXPECT_EQ(qwen.eos_token_id(), -1);
  EXPECT_EQ(torchtp::default_max_seq_len(qwen), torchtp::kDefaultMaxSeqLen);
  // null key/value heads: as many as query heads, in every family.
  on_rank0([&] {
    write_hf_config(
        dir_ + "/mistral",
        {{"model_type", "mistral"},
         {"num_attention_heads", 16},
         {"num_key_value_heads", nullptr},
         {"eos_token_id", {128001, 128009}},
         {"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}});
  });
  mistral = torchtp::read_pretrained_config(dir_ + "/mistral");
  EXPECT_EQ(mistral.num_key_value_heads, 16);
  EXPECT_EQ(mistral.head_dim, 256);
  EXPECT_EQ(mistral.eos_token_ids, (std::vector<int64_t>{128001, 128009}));
  EXPECT_EQ(mistral.rotary.scaling(), torchtp::RopeScalingType::linear);
  EXPECT_EQ(mistral.rotary.factor(), 2.0);
}

TEST_F(PretrainedFiles, AMissingUnknownOrMisshapenTensorIsNamedWithItsFile) {
  const auto s = mistral_shape();
  const auto t = random_hf(s, 11);
  const auto file = dir_ + "/model.safetensors";
  auto load = [&] { torchtp::load_pretrained(dir_, opts(torch::kFloat)); };
  on_rank0([&] {
    write_hf_config(dir_, hf_config(s));
    auto broken = t;
    broken.erase("model.layers.1.mlp.up_proj.weight");
    write_hf_single(dir_, broken);
  });
  EXPECT_TRUE(raises_with(load, {file, "model.layers.1.mlp.up_proj.weight"}));
  on_rank0([&] {
    auto broken = t;
    broken["model.layers.2.input_layernorm.weight"] = torch::ones({s.hidden});
    write_hf_single(dir_, broken);
  });
  EXPECT_TRUE(raises_with(
      load, {file, "'model.layers.2.input_layernorm.weight'",
             "num_hidden_layers 2"}));
  on_rank0([&] {
    auto broken = t;
    broken["model.layers.0.self_attn.k_proj.weight"] =
        torch::zeros({4, s.hidden});
    write_hf_single(dir_, broken);
  });
  EXPECT_TRUE(raises_with(
      load, {file, "'model.layers.0.self_attn.k_proj.weight'", "[4, 32]",
             "expected [8, 32]"}));
  on_rank0([&] {
    auto broken = t;
    broken["model.norm.weight"] = torch::ones({s.hidden}, torch::kLong);
    write_hf_single(dir_, broken);
  });
  EXPECT_TRUE(raises_with(load, {file, "'model.norm.weight'", "Long"}));
  // Untied, so lm_head.weight is needed.
  on_rank0([&] {
    auto broken = t;
    broken.erase("lm_head.weight");
    write_hf_single(dir_, broken);
  });
  EXPECT_TRUE(raises_with(load, {file, "'lm_head.weight'"}));
}

TEST_F(PretrainedFiles, ConfigsItCannotServeAreRefusedNamingTheKey) {
  const auto s = mistral_shape();
  on_rank0([&] { write_hf_single(dir_, random_hf(s, 12)); });
  const auto path = dir_ + "/config.json";
  auto with = [&](const nlohmann::json& patch) {
    on_rank0([&] {
      auto c = hf_config(s);
      c.merge_patch(patch);
      write_hf_config(dir_, c);
    });
  };
  auto load = [&](int64_t max_seq_len = 0) {
    torchtp::load_pretrained(
        dir_, opts(torch::kFloat).max_seq_len(max_seq_len));
  };
  EXPECT_TRUE(raises_with([&] { load(); }, {path})); // no config.json yet
  with({{"hidden_act", "gelu"}});
  EXPECT_TRUE(raises_with([&] { load(); }, {path, "hidden_act", "\"gelu\""}));
  with({{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}}});
  EXPECT_TRUE(raises_with([&] { load(); }, {path, "rope_scaling", "\"yarn\""}));
  with({{"rope_scaling", {{"type", "dynamic"}, {"factor", 4.0}}}});
  EXPECT_TRUE(
      raises_with([&] { load(); }, {path, "rope_scaling", "\"dynamic\""}));
  with({{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}}});
  EXPECT_TRUE(
      raises_with([&] { load(); }, {path, "rope_scaling", "low_freq_factor"}));
  with({{"model_type", "falcon"}});
  EXPECT_TRUE(raises_with([&] { load(); }, {path, "model_type", "\"falcon\""}));
  with({{"num_key_value_heads", 3}});
  EXPECT_TRUE(raises_with(
      [&] { load(); },
      {path, "num_attention_heads (8)", "num_key_value_heads (3)"}));
  with({{"num_hidden_layers", "two"}});
  EXPECT_TRUE(raises_with([&] { load(); }, {path, "num_hidden_layers"}));
  // Contexts past max_position_embeddings, or Mistral's sliding window.
  with(nlohmann::json::object());
  EXPECT_TRUE(raises_with(
      [&] { load(kHfPositions + 1); }, {path, "max_position_embeddings"}));
  with({{"sliding_window", 8}});
  EXPECT_TRUE(raises_with([&] { load(16); }, {path, "sliding_window", "8"}));
  // By default the context is the window.
  EXPECT_EQ(
      torchtp::load_pretrained(dir_, opts(torch::kFloat))->max_seq_len(), 8);
  // A missing sliding_window is MistralConfig's 4096: more than 32.
  on_rank0([&] {
    auto c = hf_config(s);
    c.erase("sliding_window");
    write_hf_config(dir_, c);
  });
  EXPECT_EQ(
      torchtp::load_pretrained(dir_, opts(torch::kFloat))->max_seq_len(),
      kHfPositions);
}

TEST_F(PretrainedFiles, Qwen2SlidingWindowLayersAreRefusedNamingTheKey) {
  auto s = hf_shapes()[3];
  on_rank0([&] {
    write_hf_single(dir_, random_hf(s, 13));
    auto c = hf_config(s);
    c["use_sliding_window"] = true; // window 4 from layer 0 on
    write_hf_config(dir_, c);
  });
  auto load = [&](int64_t n) {
    return torchtp::load_pretrained(dir_, opts(torch::kFloat).max_seq_len(n));
  };
  EXPECT_TRUE(raises_with(
      [&] { load(16); }, {dir_ + "/config.json", "use_sliding_window", "4"}));
  EXPECT_EQ(load(4)->max_seq_len(), 4);
  // No layer from max_window_layers on: no sliding window.
  on_rank0([&] {
    auto c = hf_config(s);
    c["use_sliding_window"] = true;
    c["max_window_layers"] = s.layers;
    write_hf_config(dir_, c);
  });
  EXPECT_EQ(load(16)->max_seq_len(), 16);
}

TEST_F(PretrainedFiles, GPT2GoesThroughTheSameEntryPoint) {
  // A GPT-2 with no layers: embeddings, final LayerNorm, tied output.
  const int64_t vocab = 50, positions = 8, embd = 16;
  on_rank0([&] {
    write_hf_config(
        dir_, {{"model_type", "gpt2"},
               {"vocab_size", vocab},
               {"n_positions", positions},
               {"n_embd", embd},
               {"n_layer", 0},
               {"n_head", 4},
               {"eos_token_id", 7}});
    torch::manual_seed(14);
    torchtp::write_safetensors(
        dir_ + "/model.safetensors",
        {{"wte.weight", torch::randn({vocab, embd})},
         {"wpe.weight", torch::randn({positions, embd})},
         {"ln_f.weight", 1 + torch::randn({embd}) / 10},
         {"ln_f.bias", torch::randn({embd}) / 10}});
  });
  const auto config = torchtp::read_pretrained_config(dir_);
  EXPECT_EQ(config.model_type, "gpt2");
  EXPECT_EQ(config.eos_token_id(), 7);
  auto a = torchtp::load_pretrained(dir_, opts(torch::kDouble));
  auto b = torchtp::load_gpt2(
      dir_, torchtp::LoadGPT2Options().group(world()).dtype(torch::kDouble));
  c10::InferenceMode inference;
  torch::manual_seed(15);
  auto ids = torch::randint(vocab, {2, positions}, torch::kLong);
  EXPECT_TRUE(torch::equal(a->full_logits(ids), b->full_logits(ids)));
  EXPECT_TRUE(raises_with(
      [&] {
        torchtp::load_pretrained(dir_, opts(torch::kDouble).max_seq_len(4));
      },
      {"n_positions (8)"}));
}
