// random_gpt2: writes a GPT-2 directory with random weights in Hugging Face's
// layout (config.json + model.safetensors, Conv1D weights stored [in, out]),
// to try `generate --model` and `bench_generate --model` without
// downloading a checkpoint. The default shape is GPT-2 small's (124M
// parameters, 500 MB in float32).
//
//   ./random_gpt2 --out /tmp/gpt2-random
//   torchtp-run --nproc-per-node 2 ./generate --model /tmp/gpt2-random \
//       --prompt-ids 464,2068,7586 --max-new-tokens 16 --greedy

#include <torchtp/safetensors.h>

#include "guarded_main.h"

#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace {

int run(int argc, char** argv) {
  std::string out;
  int64_t vocab = 50257, positions = 1024, embd = 768, layers = 12, heads = 12;
  double std_dev = 0.02;
  uint64_t seed = 0;
  CLI::App app(
      "Write a GPT-2 directory with random weights (Hugging Face layout)");
  app.add_option("--out", out, "directory to create")->required();
  app.add_option("--vocab", vocab, "vocab_size")->capture_default_str();
  app.add_option("--positions", positions, "n_positions")
      ->capture_default_str();
  app.add_option("--embd", embd, "n_embd")->capture_default_str();
  app.add_option("--layers", layers, "n_layer")->capture_default_str();
  app.add_option("--heads", heads, "n_head")->capture_default_str();
  app.add_option("--std", std_dev, "standard deviation of the weights")
      ->capture_default_str();
  app.add_option("--seed", seed, "random seed")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  TORCH_CHECK(
      vocab > 0 && positions > 0 && embd > 0 && layers >= 0 && heads > 0 &&
          embd % heads == 0,
      "random_gpt2: sizes must be positive and n_embd divisible by n_head");

  torch::manual_seed(seed);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  auto normal = [&](const std::string& name, std::vector<int64_t> shape) {
    tensors.emplace_back(name, torch::randn(shape) * std_dev);
  };
  // LayerNorms near the identity, but not exactly: a loader that mixed up
  // weight and bias would show.
  auto norm = [&](const std::string& name) {
    tensors.emplace_back(name + ".weight", 1 + torch::randn({embd}) * 0.1);
    tensors.emplace_back(name + ".bias", torch::randn({embd}) * 0.1);
  };
  auto conv1d = [&](const std::string& name, int64_t in, int64_t out_dim) {
    normal(name + ".weight", {in, out_dim});
    normal(name + ".bias", {out_dim});
  };
  normal("wte.weight", {vocab, embd});
  normal("wpe.weight", {positions, embd});
  for (int64_t i = 0; i < layers; ++i) {
    const auto h = "h." + std::to_string(i) + ".";
    norm(h + "ln_1");
    conv1d(h + "attn.c_attn", embd, 3 * embd);
    conv1d(h + "attn.c_proj", embd, embd);
    norm(h + "ln_2");
    conv1d(h + "mlp.c_fc", embd, 4 * embd);
    conv1d(h + "mlp.c_proj", 4 * embd, embd);
  }
  norm("ln_f");

  std::filesystem::create_directories(out);
  nlohmann::json config = {
      {"model_type", "gpt2"},
      {"architectures", {"GPT2LMHeadModel"}},
      {"vocab_size", vocab},
      {"n_positions", positions},
      {"n_ctx", positions},
      {"n_embd", embd},
      {"n_layer", layers},
      {"n_head", heads},
      {"n_inner", nullptr},
      {"activation_function", "gelu_new"},
      {"layer_norm_epsilon", 1e-5},
      {"tie_word_embeddings", true},
      {"eos_token_id", vocab - 1},
      {"bos_token_id", vocab - 1}};
  std::ofstream(out + "/config.json") << config.dump(2) << "\n";
  torchtp::write_safetensors(
      out + "/model.safetensors", tensors, {{"format", "pt"}});
  std::printf(
      "wrote %s: config.json and model.safetensors (%zu tensors)\n",
      out.c_str(), tensors.size());
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "random_gpt2", [&] { return run(argc, argv); });
}
