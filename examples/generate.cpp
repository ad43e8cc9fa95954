// generate: text generation at any tensor-parallel size from a checkpoint of
// the main job (train_gpt), which may have been saved at another TP size,
// or from a Hugging Face model directory (config.json + safetensors) of a
// GPT-2, Llama, Mistral or Qwen2 (load_pretrained).
//
//   torchtp-run --nproc-per-node 2 ./generate --checkpoint
//   out/demo/tp2/checkpoint \
//       --prompt "First Citizen:" --max-new-tokens 200 --top-k 10 --seed 1
//   torchtp-run --nproc-per-node 2 ./generate --model Qwen2.5-0.5B \
//       --prompt "The capital of France is" --max-new-tokens 20 --greedy
//
// A --model directory's tokenizer (tokenizer.json, or GPT-2's vocab.json +
// merges.txt) encodes --prompt / --prompt-file and decodes what comes;
// without one, prompts are ids (--prompt-ids).
//
// Each rank holds its slices of the model and caches the keys and values of
// its own heads; only each rank's best candidates for a token are exchanged,
// never the vocabulary. Rank 0 streams the text as it comes, then prints the
// prefill time and ms per generated token; --json writes the ids and the
// five largest logits of every step, for checking from outside.

#include <torchtp/torchtp.h>

#include "guarded_main.h"

#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Args {
  std::string checkpoint;
  std::string model;
  std::string prompt;
  std::string prompt_file;
  std::vector<int64_t> prompt_ids;
  int64_t max_new_tokens = 64;
  bool greedy = false;
  double temperature = 1.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  int64_t eos_id = -1;
  std::string dtype = "float32";
  std::string kv_cache_dtype = "auto";
  int64_t max_seq_len = 0;
  std::string json;
};

// Text to ids and back: a Hugging Face tokenizer, the main job's character
// vocabulary, or nothing (ids only).
class Text {
 public:
  static Text of_tokenizer(torchtp::Tokenizer tokenizer) {
    Text t;
    t.tokenizer_ = std::move(tokenizer);
    return t;
  }
  static Text of_characters(std::string vocab) {
    Text t;
    t.chars_ = std::move(vocab);
    return t;
  }
  bool has_text() const {
    return tokenizer_.has_value() || !chars_.empty();
  }
  std::vector<int64_t> encode(const std::string& text) const {
    if (tokenizer_) {
      return tokenizer_->encode(text);
    }
    std::vector<int64_t> ids;
    for (char c : text) {
      const auto at = chars_.find(c);
      TORCH_CHECK(
          at != std::string::npos, "generate: the prompt's character '", c,
          "' is not in the model's vocabulary");
      ids.push_back(static_cast<int64_t>(at));
    }
    return ids;
  }
  std::string decode(const std::vector<int64_t>& ids) const {
    if (tokenizer_) {
      return tokenizer_->decode(ids);
    }
    std::string text;
    for (int64_t id : ids) {
      text += chars_.at(id);
    }
    return text;
  }
  // Streams the text `ids` add after `context`: whole UTF-8 characters
  // only, spaced as in a decode of context and ids together.
  class Stream {
   public:
    Stream(const Text& text, const std::vector<int64_t>& context)
        : text_(text) {
      if (text.tokenizer_) {
        stream_.emplace(*text.tokenizer_);
        for (int64_t id : context) {
          stream_->step(id); // the prompt's text is printed as given
        }
      }
    }
    std::string step(int64_t id) {
      return stream_ ? stream_->step(id) : text_.decode({id});
    }
    std::string finish() {
      return stream_ ? stream_->finish() : std::string();
    }

   private:
    const Text& text_;
    std::optional<torchtp::DecodeStream> stream_;
  };

 private:
  std::optional<torchtp::Tokenizer> tokenizer_;
  std::string chars_;
};

bool has_tokenizer(const std::string& dir) {
  return std::ifstream(dir + "/tokenizer.json").good() ||
         (std::ifstream(dir + "/vocab.json").good() &&
          std::ifstream(dir + "/merges.txt").good());
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "generate: cannot read --prompt-file ", path);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

int64_t setting(
    const std::map<std::string, std::string>& extra, const std::string& key) {
  auto it = extra.find(key);
  TORCH_CHECK(
      it != extra.end(), "generate: the checkpoint does not record '", key,
      "' (it was not written by train_gpt)");
  return std::stoll(it->second);
}

int run(int argc, char** argv) {
  Args a;
  CLI::App app(
      "Generate text from a torchtp checkpoint of the main job or from a "
      "Hugging Face GPT-2, Llama, Mistral or Qwen2 directory, at any "
      "tensor-parallel size (the world size)");
  auto* checkpoint = app.add_option(
      "--checkpoint", a.checkpoint,
      "torchtp checkpoint of train_gpt (character vocabulary)");
  app.add_option(
         "--model", a.model,
         "Hugging Face directory (model_type gpt2, llama, mistral or qwen2): "
         "config.json and model.safetensors (or "
         "model.safetensors.index.json); prompts as --prompt-ids")
      ->excludes(checkpoint);
  app.add_option(
         "--max-seq-len", a.max_seq_len,
         "--model: positions the KV cache holds (0: max_position_embeddings, "
         "at most 4096)")
      ->capture_default_str();
  auto* text = app.add_option(
      "--prompt", a.prompt,
      "prompt text, encoded with the --model directory's tokenizer (or the "
      "--checkpoint model's character vocabulary)");
  auto* file = app.add_option(
                      "--prompt-file", a.prompt_file,
                      "one prompt: this file's exact bytes (as --prompt)")
                   ->excludes(text);
  app.add_option("--prompt-ids", a.prompt_ids, "prompt as ids: 1,2,3")
      ->delimiter(',')
      ->excludes(text)
      ->excludes(file);
  app.add_option(
         "--max-new-tokens", a.max_new_tokens,
         "tokens to generate; 0: only encode the prompt (or decode "
         "--prompt-ids) and print it")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_flag("--greedy", a.greedy, "always the most likely token");
  app.add_option("--temperature", a.temperature, "divides the logits")
      ->capture_default_str();
  app.add_option("--top-k", a.top_k, "sample among the k best (0: all)")
      ->capture_default_str();
  app.add_option("--top-p", a.top_p, "nucleus: smallest mass >= p (1: all)")
      ->capture_default_str();
  app.add_option("--seed", a.seed, "sampling seed")->capture_default_str();
  auto* eos = app.add_option(
      "--eos-id", a.eos_id,
      "stop after this id (default: --model's eos_token_id; -1: never)");
  app.add_option(
         "--dtype", a.dtype,
         "float32, float64, bfloat16, or int8 (int8 weights with one scale "
         "per row, float32 activations: a quarter of float32's memory)")
      ->check(CLI::IsMember({"float32", "float64", "bfloat16", "int8"}))
      ->capture_default_str();
  app.add_option(
         "--kv-cache-dtype", a.kv_cache_dtype,
         "what the key/value cache stores: auto (the model's dtype; float32 "
         "for int8), float32, bfloat16 (half the cache and half what "
         "attention reads per token; keys and values rounded to bfloat16) "
         "or float64")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float64"}))
      ->capture_default_str();
  app.add_option(
      "--json", a.json,
      "write prompt_ids, generated_ids and the top-5 logits of every step "
      "(and prompt_text, generated_text when there is a tokenizer)");
  CLI11_PARSE(app, argc, argv);
  if (a.checkpoint.empty() == a.model.empty()) {
    std::fprintf(stderr, "generate: give --checkpoint or --model\n");
    return 2;
  }
  if (!a.model.empty() && a.prompt_ids.empty() && !has_tokenizer(a.model)) {
    std::fprintf(
        stderr,
        "generate: %s has no tokenizer (tokenizer.json, or vocab.json and "
        "merges.txt): give the prompt as --prompt-ids\n",
        a.model.c_str());
    return 2;
  }

  torchtp::Group world = torchtp::init_from_env();
  const bool lead = world.rank() == 0;
  const bool int8 = a.dtype == "int8";
  const auto dtype =
      int8 ? torch::kFloat : torchtp::dtype_from_name(a.dtype);
  const auto kv_cache_dtype =
      a.kv_cache_dtype == "auto"
          ? c10::nullopt
          : c10::optional<torch::Dtype>(
                torchtp::dtype_from_name(a.kv_cache_dtype));

  torchtp::GPT gpt{nullptr};
  std::string vocab; // the checkpoint's characters
  int64_t eos_id = a.eos_id;
  if (!a.model.empty() && eos->count() == 0) {
    eos_id = torchtp::read_pretrained_config(a.model).eos_token_id();
  }
  if (!a.model.empty()) {
    gpt = torchtp::load_pretrained(
        a.model,
        // Any number of ranks: heads and vocabulary split unevenly where
        // they do not divide.
        torchtp::LoadPretrainedOptions()
            .group(world)
            .dtype(dtype)
            .uneven(true)
            .max_seq_len(a.max_seq_len)
            .int8_weights(int8));
  } else {
    // The model is the one train_gpt trained: its shape is in the checkpoint.
    const auto info = torchtp::read_checkpoint_extra(a.checkpoint);
    vocab = info.count("vocab") ? info.at("vocab") : "";
    TORCH_CHECK(!vocab.empty(), "generate: the checkpoint has no vocabulary");
    gpt = torchtp::GPT(torchtp::GPTOptions(
                           static_cast<int64_t>(vocab.size()),
                           setting(info, "seq"))
                           .d_model(setting(info, "d_model"))
                           .num_heads(setting(info, "heads"))
                           .num_layers(setting(info, "layers"))
                           .uneven(true) // any number of ranks
                           .group(world)
                           .dtype(dtype));
    torchtp::load_checkpoint(a.checkpoint, *gpt);
    if (int8) {
      torchtp::quantize_int8(*gpt);
    }
  }

  Text text_of;
  if (!a.model.empty()) {
    if (has_tokenizer(a.model)) {
      text_of = Text::of_tokenizer(torchtp::Tokenizer::from_directory(a.model));
    }
  } else {
    text_of = Text::of_characters(vocab);
  }
  std::string prompt_text;
  std::vector<int64_t> prompt;
  if (!a.prompt_ids.empty()) {
    prompt = a.prompt_ids;
    if (text_of.has_text()) {
      prompt_text = text_of.decode(prompt);
    }
  } else {
    prompt_text = !a.prompt_file.empty() ? read_file(a.prompt_file)
                  : a.prompt.empty() && a.model.empty() ? std::string("\n")
                                                        : a.prompt;
    prompt = text_of.encode(prompt_text);
  }
  TORCH_CHECK(
      !prompt.empty() || a.max_new_tokens == 0,
      "generate: the prompt encodes to no ids; give a longer one (or "
      "--prompt-ids)");

  if (a.max_new_tokens == 0) {
    // Only the prompt: its ids when given text, its text when given ids.
    if (lead) {
      if (a.prompt_ids.empty()) {
        for (size_t i = 0; i < prompt.size(); ++i) {
          std::printf("%s%lld", i ? "," : "", static_cast<long long>(prompt[i]));
        }
        std::printf("\n");
      } else {
        std::printf("%s\n", prompt_text.c_str());
      }
    }
  }
  torchtp::Generation gen;
  std::string generated_text;
  if (a.max_new_tokens > 0) {
    auto options = torchtp::GenerateOptions()
                       .max_new_tokens(a.max_new_tokens)
                       .seed(a.seed)
                       .eos_id(eos_id)
                       .top_logits(5)
                       .kv_cache_dtype(kv_cache_dtype)
                       .sampling(torchtp::SamplingOptions()
                                     .greedy(a.greedy)
                                     .temperature(a.temperature)
                                     .top_k(a.top_k)
                                     .top_p(a.top_p));
    if (lead) {
      std::printf("%s", prompt_text.c_str());
      std::fflush(stdout);
    }
    Text::Stream stream(text_of, prompt);
    gen = torchtp::generate(
        *gpt, {prompt}, options, [&](int64_t, const at::Tensor& ids) {
          if (lead) {
            const int64_t id = ids[0].item<int64_t>();
            if (text_of.has_text()) {
              const auto piece = stream.step(id);
              generated_text += piece;
              std::printf("%s", piece.c_str());
            } else {
              std::printf("%lld ", static_cast<long long>(id));
            }
            std::fflush(stdout);
          }
        });
    if (lead && text_of.has_text()) {
      const auto rest = stream.finish();
      generated_text += rest;
      std::printf("%s", rest.c_str());
    }
  }

  const auto& steps = gen.step_seconds;
  double decode = 0;
  for (double s : steps) {
    decode += s;
  }
  if (lead && a.max_new_tokens > 0) {
    std::printf(
        "\n\nTP=%d: prompt %zu tokens, prefill + first token %.1f ms; "
        "%zu more tokens at %.2f ms/token (%.0f tokens/s)\n",
        world.size(), prompt.size(), 1e3 * gen.prefill_seconds, steps.size(),
        steps.empty() ? 0.0 : 1e3 * decode / steps.size(),
        decode > 0 ? steps.size() / decode : 0.0);
  }
  if (lead && !a.json.empty()) {
    nlohmann::json out = {
        {"prompt_ids", prompt},
        {"generated_ids",
         gen.tokens.empty() ? std::vector<int64_t>() : gen.tokens[0]},
        {"steps", nlohmann::json::array()}};
    if (text_of.has_text()) {
      // What was streamed: the text the generated ids add to the prompt's.
      out["prompt_text"] = prompt_text;
      out["generated_text"] = generated_text;
    }
    for (const auto& top : gen.top) {
      nlohmann::json pairs = nlohmann::json::array();
      auto values = top.values.to(torch::kDouble);
      for (int64_t j = 0; j < top.ids.size(1); ++j) {
        if (top.ids[0][j].item<int64_t>() >= 0) {
          pairs.push_back(
              {top.ids[0][j].item<int64_t>(), values[0][j].item<double>()});
        }
      }
      out["steps"].push_back({{"top", pairs}});
    }
    std::ofstream(a.json) << out.dump(1) << "\n";
    std::printf("wrote %s\n", a.json.c_str());
  }
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "generate", [&] { return run(argc, argv); });
}
