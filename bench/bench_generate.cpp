// bench_generate: serving latency of a GPT-2-small-shaped model (d_model
// 768, 12 layers, 12 heads, vocabulary 50257, GELU's tanh form as GPT-2's
// "gelu_new", random weights), or of a
// Hugging Face directory (GPT-2, Llama, Mistral or Qwen2) loaded with
// load_pretrained (--model), at the world size it is
// started with: prefill of a prompt, then greedy decoding with the
// key/value cache. Prints a table on rank 0 and writes JSON.
//
//   torchtp-run --nproc-per-node N ./bench_generate [--batches 1,8]
//       [--dtypes float32,bfloat16] [--backends shm,gloo] [--prompt 128]
//       [--new-tokens 64] [--repeats 3] [--model DIR] [--json F]
//       [--kv-cache-dtypes auto,bfloat16]
//
// Per row: prefill time and tokens/s, the median ms per generated token
// (every step after the first), and the largest resident memory of any rank
// (peak and now, from /proc/self/status). Every communicator runs the same
// model on the same ranks (Group::with_backend), and every key/value cache
// dtype asked for the same model; repeats alternate them.
// The peak is the process's: for one model's memory, run one dtype and one
// backend (and with --model, the peak after loading is printed too).
//
// Decoding one token reads every weight once, so it is bound by memory
// bandwidth, measured first in the same run (bench_util.h's
// measure_read_bandwidth: each rank alone with one thread and with all its
// threads, then every rank at once). Per row: the bytes of weights the
// largest rank reads per step (batch 8 reads them once per step too), the
// time that reading them takes at the all-ranks-at-once bandwidth of a
// rank (limit_ms), and the fraction of that limit a step reaches
// (limit_ms / ms per token; 1 would be memory-bound at full bandwidth).

#include <torchtp/torchtp.h>

#include "bench_util.h"
#include "guarded_main.h"

#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace {

/// Bytes of weights this rank reads per decode step: every parameter and
/// buffer (at its own dtype, so quantized weights count as stored) except
/// the tables that are only looked up: the position table, and the token
/// table unless it is the output layer too (tied), which reads it whole.
int64_t decode_weight_bytes(const torchtp::GPTImpl& model) {
  auto only_looked_up = [&](const torch::Tensor& t) {
    const bool token_table = t.is_same(model.token_embedding->weight) &&
                             !model.options.tie_embeddings();
    const bool position_table =
        model.position_embedding && t.is_same(model.position_embedding->weight);
    return token_table || position_table;
  };
  std::vector<torch::Tensor> seen;
  int64_t bytes = 0;
  auto add = [&](const torch::Tensor& t) {
    if (!t.defined() || only_looked_up(t)) {
      return;
    }
    for (const auto& s : seen) {
      if (s.is_same(t)) {
        return;
      }
    }
    seen.push_back(t);
    bytes += static_cast<int64_t>(t.nbytes());
  };
  for (const auto& p : model.parameters()) {
    add(p);
  }
  for (const auto& b : model.buffers()) {
    add(b);
  }
  return bytes;
}

int run(int argc, char** argv) {
  std::vector<int64_t> batches{1, 8};
  std::vector<std::string> dtypes{"float32", "bfloat16", "int8"};
  std::vector<std::string> backend_names{"shm", "gloo"};
  std::string json_path = "bench_generate.json";
  int64_t prompt = 128, new_tokens = 64;
  int repeats = 3;
  std::string model_dir;
  std::vector<std::string> kv_names{"auto"};
  CLI::App app(
      "Prefill and decode latency of a GPT-2-small-shaped model (random "
      "weights) at this world size");
  app.add_option("--batches", batches, "prompts per batch")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option(
         "--dtypes", dtypes,
         "float32, bfloat16, float64, or int8 (int8 weights, float32 "
         "activations)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--backends", backend_names, "communicators (world size > 1)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option(
         "--kv-cache-dtypes", kv_names,
         "what the key/value cache stores: auto (the model's dtype; float32 "
         "for int8), float32, bfloat16")
      ->delimiter(',')
      ->check(CLI::IsMember({"auto", "float32", "bfloat16"}))
      ->capture_default_str();
  app.add_option("--prompt", prompt, "prompt tokens")->capture_default_str();
  app.add_option("--new-tokens", new_tokens, "generated tokens")
      ->capture_default_str();
  app.add_option("--repeats", repeats, "runs per row (median)")
      ->capture_default_str();
  app.add_option(
      "--model", model_dir,
      "Hugging Face directory (config.json + safetensors; GPT-2, Llama, "
      "Mistral or Qwen2) instead of random weights; its load time and peak "
      "memory are reported");
  app.add_option("--json", json_path, "output file")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  torchtp::Group world = torchtp::init_from_env();
  const bool root = world.rank() == 0;
  std::vector<std::string> backends =
      world.size() == 1 ? std::vector<std::string>{"self"} : backend_names;
  std::vector<torchtp::Group> groups;
  for (const auto& b : backends) {
    groups.push_back(world.size() == 1 ? world : world.with_backend(b));
  }
  // What a rank holds before any model (libtorch, OpenBLAS, communicators):
  // the part of every memory figure below that no split shrinks.
  auto base =
      torch::tensor({torchtp::bench::resident_mib("VmHWM")}, torch::kDouble);
  world.all_reduce(base, torchtp::ReduceOp::max);
  const double baseline_mib = base.item<double>();
  std::vector<c10::optional<torch::Dtype>> kv_dtypes;
  for (const auto& name : kv_names) {
    kv_dtypes.push_back(
        name == "auto" ? c10::nullopt
                       : c10::optional<torch::Dtype>(
                             torchtp::dtype_from_name(name)));
  }
  const auto bandwidth = torchtp::bench::measure_read_bandwidth(world);
  // The bandwidth buffer is freed; the peak columns are the models'.
  const bool peak_reset = torchtp::bench::reset_peak_resident();
  if (root) {
    torchtp::bench::print_header("bench_generate", world.size());
    std::printf(
        "# peak RSS before any model: %.0f MiB (largest rank)\n",
        baseline_mib);
    torchtp::bench::print_read_bandwidth(bandwidth, world.size());
    if (!peak_reset) {
      std::printf(
          "# (the kernel refused to reset the peak: peak_rss_MiB includes "
          "the bandwidth buffer)\n");
    }
    std::printf(
        "# %s, prompt %lld, %lld new tokens, greedy, median of %d\n",
        model_dir.empty()
            ? "GPT-2-small shape (d 768, 12 layers, 12 heads, vocab 50257, "
              "gelu_new)"
            : model_dir.c_str(),
        static_cast<long long>(prompt), static_cast<long long>(new_tokens),
        repeats);
  }
  nlohmann::json rows = nlohmann::json::array();
  nlohmann::json loads = nlohmann::json::array();
  for (const auto& dtype_name : dtypes) {
    const bool int8 = dtype_name == "int8";
    const auto dtype =
        int8 ? torch::kFloat : torchtp::dtype_from_name(dtype_name);
    // One model per communicator, the same full weights.
    std::vector<torchtp::GPT> models;
    for (size_t b = 0; b < groups.size(); ++b) {
      const auto& g = groups[b];
      if (model_dir.empty()) {
        torch::manual_seed(0);
        models.emplace_back(torchtp::GPTOptions(50257, 1024)
                                .d_model(768)
                                .num_heads(12)
                                .num_layers(12)
                                .activation(torchtp::Activation::gelu_tanh)
                                .group(g)
                                .dtype(dtype));
        if (int8) {
          torchtp::quantize_int8(*models.back());
        }
        continue;
      }
      world.barrier();
      const auto start = std::chrono::steady_clock::now();
      // Uneven where the size does not divide (Qwen2.5's 14 heads at 4).
      models.push_back(torchtp::load_pretrained(
          model_dir,
          torchtp::LoadPretrainedOptions()
              .group(g)
              .dtype(dtype)
              .uneven(true)
              .int8_weights(int8)));
      auto t = torch::tensor(
          {std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                         start)
               .count(),
           torchtp::bench::resident_mib("VmHWM")},
          torch::kDouble);
      world.all_reduce(t, torchtp::ReduceOp::max);
      loads.push_back(
          {{"dtype", dtype_name},
           {"backend", backends[b]},
           {"load_s", t[0].item<double>()},
           {"peak_rss_mib", t[1].item<double>()}});
      if (root) {
        std::printf(
            "# %s %s: loaded in %.2f s, peak RSS after loading %.0f MiB "
            "(largest rank)\n",
            dtype_name.c_str(), backends[b].c_str(), t[0].item<double>(),
            t[1].item<double>());
      }
    }
    // The same weights under every communicator; the largest rank's.
    auto weights = torch::tensor(
        {static_cast<double>(decode_weight_bytes(*models.front()))},
        torch::kDouble);
    world.all_reduce(weights, torchtp::ReduceOp::max);
    const double weight_bytes = weights.item<double>();
    const double limit_ms =
        1e3 * weight_bytes / (1e9 * bandwidth.all_ranks_gbs);
    if (root && dtype_name == dtypes.front()) {
      std::printf(
          "%-9s %-8s %5s %-5s %11s %14s %12s %13s %12s %10s %9s %8s\n",
          "dtype", "kv_cache", "batch", "comm", "prefill_ms", "prefill_tok/s",
          "ms/token", "peak_rss_MiB", "rss_MiB", "weight_MB", "limit_ms",
          "of_limit");
    }
    const int64_t vocab = models.front()->options.vocab_size();
    for (const int64_t batch : batches) {
      torch::manual_seed(1);
      auto ids = torch::randint(vocab, {batch, prompt}, torch::kLong);
      std::vector<std::vector<int64_t>> prompts(batch);
      for (int64_t i = 0; i < batch; ++i) {
        auto row = ids[i];
        prompts[i].assign(
            row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + prompt);
      }
      // Per (communicator, cache dtype): index b * kv_dtypes.size() + k.
      const size_t variants = groups.size() * kv_dtypes.size();
      std::vector<std::vector<double>> prefill(variants), step(variants);
      for (int r = 0; r < repeats; ++r) {
        for (size_t v = 0; v < variants; ++v) {
          const size_t b = v / kv_dtypes.size();
          groups[b].barrier();
          auto gen = torchtp::generate(
              *models[b], prompts,
              torchtp::GenerateOptions()
                  .max_new_tokens(new_tokens)
                  .kv_cache_dtype(kv_dtypes[v % kv_dtypes.size()]));
          // The slowest rank's times.
          auto t = torch::tensor(
              {gen.prefill_seconds, torchtp::bench::median(gen.step_seconds)},
              torch::kDouble);
          world.all_reduce(t, torchtp::ReduceOp::max);
          prefill[v].push_back(t[0].item<double>());
          step[v].push_back(t[1].item<double>());
        }
      }
      auto mem = torch::tensor(
          {torchtp::bench::resident_mib("VmHWM"),
           torchtp::bench::resident_mib("VmRSS")},
          torch::kDouble);
      world.all_reduce(mem, torchtp::ReduceOp::max);
      for (size_t v = 0; v < variants; ++v) {
        const size_t b = v / kv_dtypes.size();
        const auto& kv_name = kv_names[v % kv_dtypes.size()];
        const double prefill_s = torchtp::bench::median(prefill[v]);
        const double step_ms = 1e3 * torchtp::bench::median(step[v]);
        const double tok_s = batch * prompt / prefill_s;
        rows.push_back(
            {{"dtype", dtype_name},
             {"kv_cache_dtype", kv_name},
             {"batch", batch},
             {"backend", backends[b]},
             {"prefill_ms", 1e3 * prefill_s},
             {"prefill_tokens_per_s", tok_s},
             {"ms_per_token", step_ms},
             {"peak_rss_mib", mem[0].item<double>()},
             {"rss_mib", mem[1].item<double>()},
             {"weight_bytes_per_token", weight_bytes},
             {"bandwidth_limit_ms", limit_ms},
             {"fraction_of_limit", limit_ms / step_ms}});
        if (root) {
          std::printf(
              "%-9s %-8s %5lld %-5s %11.1f %14.0f %12.2f %13.0f %12.0f "
              "%10.1f %9.2f %8.2f\n",
              dtype_name.c_str(), kv_name.c_str(),
              static_cast<long long>(batch),
              backends[b].c_str(), 1e3 * prefill_s, tok_s, step_ms,
              mem[0].item<double>(), mem[1].item<double>(), weight_bytes / 1e6,
              limit_ms, limit_ms / step_ms);
          std::fflush(stdout);
        }
      }
    }
  }
  if (root) {
    nlohmann::json out = torchtp::bench::header_json(world.size());
    out["prompt"] = prompt;
    out["new_tokens"] = new_tokens;
    out["repeats"] = repeats;
    out["model"] = model_dir.empty() ? "random GPT-2 small shape" : model_dir;
    out["rows"] = rows;
    out["loads"] = loads;
    out["baseline_peak_rss_mib"] = baseline_mib;
    out["memory_bandwidth"] = torchtp::bench::bandwidth_json(bandwidth);
    std::ofstream(json_path) << out.dump(2) << "\n";
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "bench_generate", [&] { return run(argc, argv); });
}
