// torchtp-serve: an OpenAI-compatible server over a tensor-parallel model.
//
//   torchtp-run --nproc-per-node 2 torchtp-serve --model Qwen2.5-0.5B-Instruct
//   curl http://127.0.0.1:8000/v1/completions -H 'Content-Type:
//   application/json' -d '{"prompt": "Paris is", "max_tokens": 8}'
//
// Every rank loads its slices of the model and runs the engine's steps
// (continuous batching over a paged key/value cache); rank 0 also listens
// for HTTP, decides each step and broadcasts it. SIGTERM (to torchtp-run or
// rank 0) stops accepting requests, lets those running finish within
// --shutdown-seconds, cancels the rest, and exits 0.

#include "server.h"

#include "guarded_main.h"

#include <torchtp/torchtp.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>

namespace {

std::atomic<bool> stop_requested{false};

extern "C" void on_stop_signal(int) {
  stop_requested = true;
}

bool has_tokenizer(const std::string& dir) {
  namespace fs = std::filesystem;
  return fs::exists(fs::path(dir) / "tokenizer.json") ||
      (fs::exists(fs::path(dir) / "vocab.json") &&
       fs::exists(fs::path(dir) / "merges.txt"));
}

int run(int argc, char** argv) {
  std::string model_dir, dtype_name = "float32", name;
  int64_t max_seq_len = 0;
  torchtp::EngineOptions engine_options;
  torchtp::serve::ServerOptions server;
  int64_t max_batch = engine_options.max_batch();
  int64_t block_size = engine_options.block_size();
  int64_t kv_cache_tokens = 0;
  int64_t max_queue = engine_options.max_queue();
  int64_t max_prefill_tokens = engine_options.max_prefill_tokens();

  CLI::App app(
      "An OpenAI-compatible HTTP server (completions, chat completions, "
      "streaming) over a Hugging Face GPT-2, Llama, Mistral or Qwen2 "
      "directory split over the ranks of the job (run it under torchtp-run; "
      "the world size is the tensor-parallel size). Requests join the "
      "running batch at the next step and leave when done.");
  app.add_option("--model", model_dir, "the model directory (config.json, "
                 "safetensors, tokenizer)")
      ->required()
      ->check(CLI::ExistingDirectory);
  app.add_option("--served-model-name", name,
                 "the name clients give as 'model' (default: the "
                 "directory's name)");
  app.add_option("--dtype", dtype_name,
                 "float32, bfloat16 or int8 (int8 weights, float32 "
                 "activations); default float32")
      ->check(CLI::IsMember({"float32", "bfloat16", "int8"}));
  app.add_option("--max-seq-len", max_seq_len,
                 "the context served (default: the model's, at most 4096)");
  app.add_option("--host", server.host,
                 "address to listen on (default 127.0.0.1: this host only)");
  app.add_option("--port", server.port, "port (default 8000; 0: any free port)");
  app.add_option("--port-file", server.port_file,
                 "write the port listened on to this file");
  app.add_option("--api-key", server.api_key,
                 "require 'Authorization: Bearer KEY' on every request");
  app.add_option("--max-batch", max_batch,
                 "sequences in one step at most (default 16)");
  app.add_option("--kv-cache-tokens", kv_cache_tokens,
                 "positions the key/value pool holds over all requests "
                 "(default: max-batch full contexts)");
  std::string kv_cache_dtype = "auto";
  app.add_option("--kv-cache-dtype", kv_cache_dtype,
                 "what the key/value pool stores: auto (the model's dtype; "
                 "float32 for int8), float32 or bfloat16 (twice the "
                 "positions in the same memory, half the bytes attention "
                 "reads; keys and values rounded to bfloat16)")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16"}));
  app.add_option("--block-size", block_size,
                 "positions per key/value block (default 16)");
  app.add_option("--max-queue", max_queue,
                 "requests waiting for room at most; more get HTTP 429 "
                 "(default 256)");
  app.add_option("--max-prefill-tokens", max_prefill_tokens,
                 "prompt tokens prefilled in one step at most; longer "
                 "prompts are prefilled in chunks over several steps, beside "
                 "the running requests' next tokens (default 2048; lower: "
                 "sooner first tokens, slower next tokens while prompts "
                 "arrive)");
  bool batch_invariant = false;
  app.add_flag("--batch-invariant", batch_invariant,
               "make each request's results independent of the batch it "
               "shares (every float32 product through torchtp's kernels, "
               "which sum in one order whatever the row count): seeded "
               "sampling then gives the same text alone and under load; "
               "costs prefill time");
  app.add_option("--max-body-bytes", server.max_body_bytes,
                 "larger request bodies get HTTP 413 (default 16 MiB)");
  app.add_option("--http-threads", server.http_threads,
                 "HTTP worker threads: the most requests served at once "
                 "(default 128)");
  app.add_option("--shutdown-seconds", server.shutdown_seconds,
                 "after SIGTERM, requests still running then are cancelled "
                 "(default 3; keep it below torchtp-run's --grace-seconds)");
  CLI11_PARSE(app, argc, argv);

  const bool int8 = dtype_name == "int8";
  if (name.empty()) {
    name = std::filesystem::path(model_dir).lexically_normal().filename();
    if (name.empty()) {
      name = std::filesystem::path(model_dir).parent_path().filename();
    }
  }

  torchtp::Group world = torchtp::init_from_env();
  // Only rank 0 acts on SIGTERM; the others follow its steps until it shuts
  // the engine down (or fail with it).
  if (world.rank() == 0) {
    std::signal(SIGTERM, on_stop_signal);
    std::signal(SIGINT, on_stop_signal);
  } else {
    std::signal(SIGTERM, SIG_IGN);
    std::signal(SIGINT, SIG_IGN);
  }
  const auto config = torchtp::read_pretrained_config(model_dir);
  // Rank 0's text side first: a tokenizer or chat template it cannot use
  // stops the job before any weight is read.
  std::optional<torchtp::Tokenizer> tokenizer;
  torchtp::serve::ModelLimits limits;
  limits.name = name;
  limits.eos_ids = config.eos_token_ids;
  if (world.rank() == 0 && has_tokenizer(model_dir)) {
    tokenizer = torchtp::Tokenizer::from_directory(model_dir);
    limits.encode = [tok = *tokenizer](const std::string& text, bool special) {
      return tok.encode(text, special);
    };
  }
  // Parsed now: a template this server cannot render stops it here, not
  // on a request.
  if (world.rank() == 0 &&
      torchtp::ChatTemplate::has_chat_template(model_dir)) {
    TORCH_CHECK(
        tokenizer.has_value(), "torchtp-serve: ", model_dir,
        " has a chat template but no tokenizer");
    const auto chat = torchtp::ChatTemplate::from_directory(model_dir);
    limits.render_chat = [chat](const nlohmann::json& messages) {
      return chat.render(messages, /*add_generation_prompt=*/true);
    };
  }
  if (max_seq_len == 0) {
    max_seq_len = std::min<int64_t>(
        torchtp::default_max_seq_len(config), 4096);
  }
  auto model = torchtp::load_pretrained(
      model_dir, torchtp::LoadPretrainedOptions()
                     .group(world)
                     .dtype(int8 ? torch::kFloat
                                 : torchtp::dtype_from_name(dtype_name))
                     .uneven(true)
                     .max_seq_len(max_seq_len)
                     .int8_weights(int8));
  torchtp::Engine engine(
      *model, engine_options.max_batch(max_batch)
                  .block_size(block_size)
                  .kv_cache_tokens(kv_cache_tokens)
                  .kv_cache_dtype(
                      kv_cache_dtype == "auto"
                          ? c10::nullopt
                          : c10::optional<torch::Dtype>(
                                torchtp::dtype_from_name(kv_cache_dtype)))
                  .max_queue(max_queue)
                  .max_prefill_tokens(max_prefill_tokens)
                  .batch_invariant(batch_invariant));
  if (world.rank() != 0) {
    engine.follow();
    return 0;
  }
  limits.context = model->max_seq_len();
  limits.vocab_size = model->vocab_size();

  std::printf(
      "torchtp-serve: %s, %lld ranks, %s, key/value pool %.1f MiB per rank "
      "(%s), %s\n",
      model_dir.c_str(), static_cast<long long>(world.size()),
      dtype_name.c_str(),
      static_cast<double>(engine.stats().kv_cache_bytes) / (1 << 20),
      kv_cache_dtype == "auto" ? (dtype_name == "bfloat16" ? "bfloat16"
                                                            : "float32")
                               : kv_cache_dtype.c_str(),
      limits.render_chat ? "chat template" : "no chat template");
  torchtp::serve::Server(engine, limits, tokenizer, server)
      .run(stop_requested);
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "torchtp-serve", [&] { return run(argc, argv); });
}
