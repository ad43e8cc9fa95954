// Loading Hugging Face GPT-2 checkpoints: a small random GPT-2 directory is
// written here in the Hugging Face layout, and the loaded model's logits are
// compared, at every world size, with GPT-2 written below from the
// architecture (not from torchtp's blocks). Then the files are broken one
// way at a time.

#include "test_util.h"

#include "detail/read_counter.h"

#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using torchtp::testing::all_close;
using torchtp::testing::raises_with;
using torchtp::testing::world;

// A vocabulary that no world size divides, padded differently at 3 ranks
// (to 192) than at 1, 2 and 4 (to 128); 12 heads split over 1 to 4 ranks.
constexpr int64_t kGPT2Vocab = 101, kPositions = 16, kEmbd = 48, kHeads = 12;
constexpr int64_t kLayers = 2;

using Tensors = std::map<std::string, torch::Tensor>;

// GPT-2's tensors, named and shaped as Hugging Face stores them: Conv1D
// weights `[in, out]`, c_attn's columns [q | k | v].
Tensors random_gpt2(bool tied) {
  torch::manual_seed(11);
  Tensors t;
  auto normal = [](std::vector<int64_t> shape, double std) {
    return torch::randn(shape) * std;
  };
  auto norm = [&](const std::string& name) {
    t[name + ".weight"] = 1 + normal({kEmbd}, 0.1);
    t[name + ".bias"] = normal({kEmbd}, 0.1);
  };
  auto conv1d = [&](const std::string& name, int64_t in, int64_t out) {
    t[name + ".weight"] = normal({in, out}, 0.2);
    t[name + ".bias"] = normal({out}, 0.1);
  };
  t["wte.weight"] = normal({kGPT2Vocab, kEmbd}, 0.5);
  t["wpe.weight"] = normal({kPositions, kEmbd}, 0.3);
  for (int64_t i = 0; i < kLayers; ++i) {
    const auto h = "h." + std::to_string(i) + ".";
    norm(h + "ln_1");
    conv1d(h + "attn.c_attn", kEmbd, 3 * kEmbd);
    conv1d(h + "attn.c_proj", kEmbd, kEmbd);
    norm(h + "ln_2");
    conv1d(h + "mlp.c_fc", kEmbd, 4 * kEmbd);
    conv1d(h + "mlp.c_proj", 4 * kEmbd, kEmbd);
  }
  norm("ln_f");
  if (!tied) {
    t["lm_head.weight"] = normal({kGPT2Vocab, kEmbd}, 0.5);
  }
  return t;
}

// GPT-2 from its architecture, unsharded, in float64: pre-LayerNorm
// blocks, Conv1D `x @ W + b`, tanh GELU, causal attention scaled by
// 1/sqrt(head_dim), output tied to wte unless lm_head is given.
torch::Tensor gpt2_logits(const Tensors& w, const torch::Tensor& ids) {
  namespace F = torch::nn::functional;
  auto p = [&](const std::string& name) {
    return w.at(name).to(torch::kDouble);
  };
  auto ln = [&](const torch::Tensor& x, const std::string& name) {
    return F::layer_norm(
        x, F::LayerNormFuncOptions({kEmbd})
               .weight(p(name + ".weight"))
               .bias(p(name + ".bias"))
               .eps(1e-5));
  };
  auto conv1d = [&](const torch::Tensor& x, const std::string& name) {
    return torch::matmul(x, p(name + ".weight")) + p(name + ".bias");
  };
  const int64_t b = ids.size(0), s = ids.size(1), hd = kEmbd / kHeads;
  auto h = p("wte.weight").index_select(0, ids.flatten()).view({b, s, kEmbd}) +
           p("wpe.weight").narrow(0, 0, s);
  auto heads = [&](const torch::Tensor& x) {
    return x.view({b, s, kHeads, hd}).transpose(1, 2);
  };
  auto future = torch::ones({s, s}, torch::kBool).triu(1);
  for (int64_t i = 0; i < kLayers; ++i) {
    const auto n = "h." + std::to_string(i) + ".";
    auto qkv = conv1d(ln(h, n + "ln_1"), n + "attn.c_attn").split(kEmbd, -1);
    auto scores =
        torch::matmul(heads(qkv[0]), heads(qkv[1]).transpose(-2, -1)) /
        std::sqrt(static_cast<double>(hd));
    scores = scores.masked_fill(future, -INFINITY);
    auto context = torch::matmul(torch::softmax(scores, -1), heads(qkv[2]))
                       .transpose(1, 2)
                       .reshape({b, s, kEmbd});
    h = h + conv1d(context, n + "attn.c_proj");
    auto m = torch::gelu(conv1d(ln(h, n + "ln_2"), n + "mlp.c_fc"), "tanh");
    h = h + conv1d(m, n + "mlp.c_proj");
  }
  h = ln(h, "ln_f");
  const auto out = w.count("lm_head.weight") ? "lm_head.weight" : "wte.weight";
  return torch::matmul(h, p(out).t());
}

void write_config(const std::string& dir, bool tied) {
  nlohmann::json c = {
      {"model_type", "gpt2"},
      {"vocab_size", kGPT2Vocab},
      {"n_positions", kPositions},
      {"n_embd", kEmbd},
      {"n_layer", kLayers},
      {"n_head", kHeads},
      {"n_inner", nullptr},
      {"activation_function", "gelu_new"},
      {"layer_norm_epsilon", 1e-5},
      {"tie_word_embeddings", tied},
      {"eos_token_id", kGPT2Vocab - 1}};
  std::ofstream(dir + "/config.json") << c.dump(2);
}

std::vector<std::pair<std::string, torch::Tensor>> entries(
    const Tensors& t, const std::string& prefix = "") {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, tensor] : t) {
    out.emplace_back(prefix + name, tensor);
  }
  return out;
}

// One model.safetensors, as `GPT2Model.save_pretrained` writes it.
void write_single(const std::string& dir, const Tensors& t, bool tied) {
  write_config(dir, tied);
  torchtp::write_safetensors(dir + "/model.safetensors", entries(t));
}

// As `GPT2LMHeadModel` writes it: the `transformer.` prefix, the attention
// mask buffers and the tied lm_head.weight saved anyway, over two files
// listed by model.safetensors.index.json.
void write_split(const std::string& dir, const Tensors& t) {
  write_config(dir, /*tied=*/true);
  Tensors extra = t;
  for (int64_t i = 0; i < kLayers; ++i) {
    const auto h = "h." + std::to_string(i) + ".attn.";
    extra[h + "bias"] = torch::ones({1, 1, kPositions, kPositions}).tril();
    extra[h + "masked_bias"] = torch::tensor(-1e4);
  }
  std::vector<std::pair<std::string, torch::Tensor>> files[2];
  nlohmann::json map = nlohmann::json::object();
  int next = 0;
  for (const auto& [name, tensor] : extra) {
    const int f = next++ % 2;
    files[f].emplace_back("transformer." + name, tensor);
    map["transformer." + name] =
        "model-0000" + std::to_string(f + 1) + ".safetensors";
  }
  files[0].emplace_back("lm_head.weight", t.at("wte.weight"));
  map["lm_head.weight"] = "model-00001.safetensors";
  for (int f = 0; f < 2; ++f) {
    torchtp::write_safetensors(
        dir + "/model-0000" + std::to_string(f + 1) + ".safetensors",
        files[f]);
  }
  std::ofstream(dir + "/model.safetensors.index.json")
      << nlohmann::json({{"metadata", {{"total_size", 0}}},
                         {"weight_map", map}})
             .dump(2);
}

torch::Tensor prompt_ids() {
  torch::manual_seed(3);
  return torch::randint(kGPT2Vocab, {2, kPositions}, torch::kLong);
}

} // namespace

// Outside the anonymous namespace: gtest derives each test from it.
class GPT2Loader : public torchtp::testing::SharedDirTest {
 protected:
  GPT2Loader() : SharedDirTest("gpt2") {}
  void expect_logits_match(
      const Tensors& weights, torch::Dtype dtype, int64_t block_bytes = 1024) {
    auto gpt = torchtp::load_gpt2(
        dir_,
        torchtp::LoadGPT2Options().group(world()).dtype(dtype).block_bytes(
            block_bytes));
    c10::InferenceMode inference;
    auto ids = prompt_ids();
    auto logits = gpt->full_logits(ids);
    EXPECT_EQ(logits.scalar_type(), dtype);
    const double tol = dtype == torch::kDouble ? 1e-10 : 1e-4;
    EXPECT_TRUE(all_close(logits, gpt2_logits(weights, ids), {tol, tol}));
  }
};

TEST_F(GPT2Loader, LogitsEqualGPT2FromItsArchitectureInFloat64) {
  const auto weights = random_gpt2(/*tied=*/true);
  on_rank0([&] { write_single(dir_, weights, /*tied=*/true); });
  expect_logits_match(weights, torch::kDouble);
}

TEST_F(GPT2Loader, LogitsEqualGPT2FromItsArchitectureInFloat32) {
  const auto weights = random_gpt2(/*tied=*/true);
  on_rank0([&] { write_single(dir_, weights, /*tied=*/true); });
  // Default blocks: every tensor in one read (the others read 1 KiB blocks).
  expect_logits_match(weights, torch::kFloat, 8 << 20);
}

TEST_F(GPT2Loader, PrefixedBuffersAndSeveralFilesLoadToo) {
  const auto weights = random_gpt2(/*tied=*/true);
  on_rank0([&] { write_split(dir_, weights); });
  expect_logits_match(weights, torch::kDouble);
}

TEST_F(GPT2Loader, AnUntiedOutputLayerIsLoaded) {
  const auto weights = random_gpt2(/*tied=*/false);
  on_rank0([&] { write_single(dir_, weights, /*tied=*/false); });
  expect_logits_match(weights, torch::kDouble);
}

TEST_F(GPT2Loader, PaddedVocabularyIsZeroAndNeverGenerated) {
  const auto weights = random_gpt2(/*tied=*/true);
  on_rank0([&] { write_single(dir_, weights, /*tied=*/true); });
  auto gpt =
      torchtp::load_gpt2(dir_, torchtp::LoadGPT2Options().group(world()));
  const auto& emb = gpt->token_embedding;
  const int64_t start = emb->vocab_start_index(), end = emb->vocab_end_index();
  if (end > kGPT2Vocab) {
    const int64_t first = std::max(start, kGPT2Vocab) - start;
    EXPECT_EQ(emb->weight.narrow(0, first, end - start - first)
                  .abs()
                  .max()
                  .item<float>(),
              0.0f);
  }
  auto out = torchtp::generate(
      *gpt, {{1, 2, 3}}, torchtp::GenerateOptions().max_new_tokens(8));
  for (int64_t id : out.tokens[0]) {
    EXPECT_LT(id, kGPT2Vocab);
  }
}

TEST_F(GPT2Loader, EachRankReadsOnlyItsShardsBytes) {
  const auto weights = random_gpt2(/*tied=*/false);
  on_rank0([&] { write_single(dir_, weights, /*tied=*/false); });
  uint64_t header = 0;
  std::ifstream(dir_ + "/model.safetensors", std::ios::binary)
      .read(reinterpret_cast<char*>(&header), sizeof(header));
  const uint64_t before = torchtp::detail::safetensors_bytes_read();
  auto gpt = torchtp::load_gpt2(
      dir_, torchtp::LoadGPT2Options().group(world()).block_bytes(1024));
  const uint64_t read = torchtp::detail::safetensors_bytes_read() - before;
  // This rank's shards, but for the padded vocabulary rows, which no file
  // holds.
  int64_t values = 0;
  for (const auto& p : gpt->named_parameters()) {
    values += p.value().numel();
  }
  const auto& emb = gpt->token_embedding;
  const int64_t padded_rows = std::max<int64_t>(
      0,
      emb->vocab_end_index() - std::max(emb->vocab_start_index(), kGPT2Vocab));
  values -= 2 * padded_rows * kEmbd; // wte and lm_head, split alike
  EXPECT_EQ(read, 8 + header + values * sizeof(float));
}

TEST_F(GPT2Loader, ReadBlockReadsTheSlice) {
  const auto t = torch::arange(2 * 5 * 7, torch::kFloat).view({2, 5, 7});
  const auto path = dir_ + "/narrow.safetensors";
  on_rank0([&] { torchtp::write_safetensors(path, {{"t", t}}); });
  torchtp::SafetensorsReader file(path);
  for (int64_t dim = 0; dim < 3; ++dim) {
    for (int64_t start = 0; start < t.size(dim); ++start) {
      for (int64_t len = 0; start + len <= t.size(dim); ++len) {
        EXPECT_TRUE(torch::equal(
            file.read_narrow("t", dim, start, len), t.narrow(dim, start, len)))
            << "dim " << dim << " [" << start << ", " << start + len << ")";
      }
    }
  }
  // Blocks narrowed on two dims at once.
  for (int64_t a = 0; a < 5; ++a) {
    for (int64_t b = 0; b < 7; ++b) {
      const int64_t la = (a * 3) % (5 - a) + 1, lb = (b * 5) % (7 - b) + 1;
      EXPECT_TRUE(torch::equal(
          file.read_block("t", {1, a, b}, {1, la, lb}),
          t.narrow(0, 1, 1).narrow(1, a, la).narrow(2, b, lb)))
          << "from [1, " << a << ", " << b << "], lengths [1, " << la << ", "
          << lb << "]";
    }
  }
  EXPECT_TRUE(raises_with(
      [&] { file.read_narrow("t", 1, 3, 3); }, {path, "'t'", "[0, 3, 0]"}));
}

TEST_F(GPT2Loader, AMissingTensorIsNamed) {
  auto weights = random_gpt2(/*tied=*/true);
  weights.erase("h.1.mlp.c_fc.weight");
  on_rank0([&] { write_single(dir_, weights, /*tied=*/true); });
  EXPECT_TRUE(raises_with(
      [&] { torchtp::load_gpt2(dir_); },
      {dir_ + "/model.safetensors", "h.1.mlp.c_fc.weight"}));
}

TEST_F(GPT2Loader, AWrongShapeIsNamed) {
  auto weights = random_gpt2(/*tied=*/true);
  weights["h.0.attn.c_attn.weight"] = torch::zeros({kEmbd, 2 * kEmbd});
  on_rank0([&] { write_single(dir_, weights, /*tied=*/true); });
  EXPECT_TRUE(raises_with(
      [&] { torchtp::load_gpt2(dir_); },
      {dir_ + "/model.safetensors", "h.0.attn.c_attn.weight", "[48, 96]",
       "expected [48, 144]"}));
}

TEST_F(GPT2Loader, AnUnknownTensorIsNamed) {
  auto weights = random_gpt2(/*tied=*/true);
  weights["h.2.ln_1.weight"] = torch::ones({kEmbd});
  on_rank0([&] { write_single(dir_, weights, /*tied=*/true); });
  EXPECT_TRUE(raises_with(
      [&] { torchtp::load_gpt2(dir_); }, {"h.2.ln_1.weight", "n_layer 2"}));
}

TEST_F(GPT2Loader, ATruncatedDataSectionIsNamed) {
  on_rank0([&] {
    write_single(dir_, random_gpt2(/*tied=*/true), /*tied=*/true);
    const auto path = dir_ + "/model.safetensors";
    fs::resize_file(path, fs::file_size(path) - 100);
  });
  // The tensor stored last is the one cut short.
  EXPECT_TRUE(raises_with(
      [&] { torchtp::load_gpt2(dir_); },
      {dir_ + "/model.safetensors", "truncated", "'wte.weight'"}));
}

TEST_F(GPT2Loader, ABadHeaderIsRefused) {
  on_rank0([&] {
    write_config(dir_, /*tied=*/true);
    std::ofstream out(dir_ + "/model.safetensors", std::ios::binary);
    const std::string header = "{\"wte.weight\": {\"dtype\": \"F32\",";
    const uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), sizeof(n));
    out << header << std::string(64, '\0');
  });
  EXPECT_TRUE(raises_with(
      [&] { torchtp::load_gpt2(dir_); },
      {dir_ + "/model.safetensors", "malformed header"}));
}

TEST_F(GPT2Loader, AMissingOrUnsupportedConfigIsRefused) {
  EXPECT_TRUE(raises_with(
      [&] { torchtp::load_gpt2(dir_); }, {dir_ + "/config.json"}));
  on_rank0([&] {
    std::ofstream(dir_ + "/config.json")
        << R"({"model_type": "gpt2", "activation_function": "relu"})";
  });
  EXPECT_TRUE(raises_with(
      [&] { torchtp::load_gpt2(dir_); }, {"config.json", "\"relu\""}));
}
