// train_gpt: the main job. A character-level GPT built from torchtp blocks,
// trained on a text with tensor (and optionally data) parallelism.
//
//   torchtp-run --nproc-per-node 2 ./train_gpt --data
//   examples/data/shakespeare.txt
//
// Rank 0 prints progress, writes the loss curve as CSV, saves a sharded
// checkpoint and prints a text sample. The same seed gives the same loss
// curve at every tensor-parallel size.

#include <torchtp/torchtp.h>

#include "guarded_main.h"

#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

namespace {

struct Args {
  std::string data = "examples/data/shakespeare.txt";
  std::string out = "out";
  std::string resume;
  int tp = 0;
  int steps = 300;
  int batch = 16;
  int seq = 64;
  int d_model = 128;
  int heads = 4;
  int layers = 4;
  std::string family = "gpt2";
  int kv_heads = 0;
  double lr = 3e-3;
  double clip = 1.0;
  double dropout = 0.0;
  bool uneven = false;
  bool sequence_parallel = false;
  bool recompute = false;
  uint64_t seed = 0;
  int log_every = 20;
  int save_every = 0;
  int sample_chars = 300;
  std::string dtype = "float32";
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "cannot read ", path);
  std::stringstream s;
  s << in.rdbuf();
  TORCH_CHECK(s.str().size() > 2, path, " is empty");
  return s.str();
}

// Row i of batch `step`: a window of seq + 1 characters. Drawn from a
// generator seeded by the step, so every rank (and a resumed run) draws the
// same windows.
std::pair<torch::Tensor, torch::Tensor> batch_for_step(
    const torch::Tensor& corpus, const Args& a, int step) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(a.seed * 1000003 + step);
  auto starts =
      torch::randint(corpus.size(0) - a.seq, {a.batch}, gen, torch::kLong);
  std::vector<torch::Tensor> rows;
  for (int i = 0; i < a.batch; ++i) {
    rows.push_back(corpus.narrow(0, starts[i].item<int64_t>(), a.seq + 1));
  }
  auto windows = torch::stack(rows);
  return {windows.narrow(1, 0, a.seq), windows.narrow(1, 1, a.seq)};
}

std::string format_eta(double seconds) {
  char buf[32];
  const int s = static_cast<int>(seconds + 0.5);
  std::snprintf(buf, sizeof(buf), "%d:%02d", s / 60, s % 60);
  return buf;
}

} // namespace

int run(int argc, char** argv) {
  Args a;
  CLI::App app{
      "Train a character-level GPT with torchtp tensor parallelism.\n"
      "Run under torchtp-run; the world is split into tensor-parallel groups "
      "of --tp ranks (default: all ranks) and data-parallel replicas.\n"
      "Example:\n"
      "  torchtp-run --nproc-per-node 2 ./train_gpt --steps 300 --out out/tp2"};
  app.add_option("--data", a.data, "text to train on")->capture_default_str();
  app.add_option(
         "--out", a.out, "directory for loss.csv, sample.txt and checkpoint/")
      ->capture_default_str();
  app.add_option(
      "--resume", a.resume,
      "continue from this checkpoint directory (any TP size)");
  app.add_option("--tp", a.tp, "tensor-parallel size (0: the world size)");
  app.add_option("--steps", a.steps, "optimizer steps in all")
      ->capture_default_str();
  app.add_option("--batch", a.batch, "sequences per step (all replicas)")
      ->capture_default_str();
  app.add_option("--seq", a.seq, "characters per sequence")
      ->capture_default_str();
  app.add_option("--d-model", a.d_model, "model width")->capture_default_str();
  app.add_option("--heads", a.heads, "attention heads")->capture_default_str();
  app.add_option("--layers", a.layers, "transformer layers")
      ->capture_default_str();
  app.add_option(
         "--family", a.family,
         "blocks of gpt2 (LayerNorm, learned positions, GELU MLP, biases) or "
         "llama (RMSNorm, rotary positions, gated SiLU MLP, no biases, "
         "grouped-query attention)")
      ->check(CLI::IsMember({"gpt2", "llama"}))
      ->capture_default_str();
  app.add_option(
      "--kv-heads", a.kv_heads,
      "key/value heads of --family llama (0: half the heads, or all of an "
      "odd number); each serves heads / kv-heads query heads");
  app.add_option("--lr", a.lr, "AdamW learning rate")->capture_default_str();
  app.add_option(
         "--clip", a.clip,
         "clip the full gradient's norm to this (0: no clipping)")
      ->capture_default_str();
  app.add_option("--dropout", a.dropout, "hidden and attention dropout")
      ->capture_default_str();
  app.add_flag(
      "--uneven", a.uneven,
      "allow a --tp that does not divide the heads, the MLP or the padded "
      "vocabulary (the first ranks hold one more head or id)");
  app.add_flag(
      "--sequence-parallel", a.sequence_parallel,
      "LayerNorms, dropout and residuals on a shard of the sequence "
      "(all-gather / reduce-scatter in place of all-reduce)");
  app.add_flag(
      "--recompute", a.recompute,
      "recompute each layer's forward in backward instead of keeping its "
      "activations");
  app.add_option("--seed", a.seed, "seed of weights, batches and dropout")
      ->capture_default_str();
  app.add_option("--log-every", a.log_every, "progress line every N steps")
      ->capture_default_str();
  app.add_option(
      "--save-every", a.save_every,
      "checkpoint every N steps (0: at the end only)");
  app.add_option(
         "--sample-chars", a.sample_chars,
         "characters of text to sample at the end")
      ->capture_default_str();
  app.add_option("--dtype", a.dtype, "float32, float64 or bfloat16")
      ->check(CLI::IsMember({"float32", "float64", "bfloat16"}))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  torchtp::Group world = torchtp::init_from_env();
  const int tp = a.tp > 0 ? a.tp : world.size();
  auto pg = torchtp::make_parallel_groups(world, tp);
  const int dp = pg.data.size();
  TORCH_CHECK(
      a.batch % dp == 0, "--batch (", a.batch,
      ") must divide by the data-parallel size (", dp, ")");
  const bool lead = world.rank() == 0;
  const auto dtype = torchtp::dtype_from_name(a.dtype);

  // Character vocabulary, sorted: the same ids on every rank.
  const std::string text = read_text(a.data);
  std::set<unsigned char> chars(text.begin(), text.end());
  std::vector<unsigned char> itos(chars.begin(), chars.end());
  std::array<int64_t, 256> stoi{};
  for (size_t i = 0; i < itos.size(); ++i) {
    stoi[itos[i]] = static_cast<int64_t>(i);
  }
  auto corpus = torch::empty({static_cast<int64_t>(text.size())}, torch::kLong);
  auto* c = corpus.data_ptr<int64_t>();
  for (size_t i = 0; i < text.size(); ++i) {
    c[i] = stoi[static_cast<unsigned char>(text[i])];
  }

  auto options = torchtp::GPTOptions(static_cast<int64_t>(itos.size()), a.seq)
                     .d_model(a.d_model)
                     .num_heads(a.heads)
                     .num_layers(a.layers)
                     .hidden_dropout(a.dropout)
                     .attention_dropout(a.dropout)
                     .dropout_seed(a.seed)
                     .uneven(a.uneven)
                     .sequence_parallel(a.sequence_parallel)
                     .recompute(a.recompute)
                     .group(pg.tensor)
                     .dtype(dtype);
  if (a.family == "llama") {
    const int kv = a.kv_heads > 0 ? a.kv_heads
                   : a.heads % 2 == 0 ? a.heads / 2
                                      : a.heads;
    options.norm(torchtp::NormType::rms_norm)
        .rotary(torchtp::RotaryOptions())
        .gated_mlp(true)
        .activation(torchtp::Activation::silu)
        .bias(false)
        .num_kv_heads(kv);
  }
  torch::manual_seed(a.seed); // the same full weights at every TP size
  torchtp::GPT gpt(options);
  torch::optim::AdamW opt(
      gpt->parameters(), torch::optim::AdamWOptions(a.lr).weight_decay(0.0));
  int64_t params = 0;
  for (const auto& p : gpt->parameters()) {
    params += p.numel();
  }

  int start = 0;
  if (!a.resume.empty()) {
    const auto extra = torchtp::load_checkpoint(a.resume, *gpt, &opt);
    const auto step = extra.find("step");
    start = step == extra.end() ? 0 : std::stoi(step->second);
    if (lead) {
      std::printf("resumed from %s at step %d\n", a.resume.c_str(), start);
    }
  }
  std::filesystem::create_directories(a.out);
  if (lead) {
    std::printf(
        "train_gpt: %d ranks = tensor %d x data %d, %zu-char text, "
        "vocab %zu, %lld parameters on rank 0, %s\n",
        world.size(), tp, dp, text.size(), itos.size(), (long long)params,
        a.dtype.c_str());
    std::ostringstream summary;
    gpt->pretty_print(summary); // the one-line summary, not the module tree
    std::printf("  %s\n", summary.str().c_str());
    std::fflush(stdout);
  }
  std::ofstream csv;
  if (lead) {
    csv.open(
        std::filesystem::path(a.out) / "loss.csv",
        start > 0 ? std::ios::app : std::ios::trunc);
    csv.precision(9);
    if (start == 0) {
      csv << "step,loss\n";
    }
  }

  auto save = [&](int step) {
    if (pg.data.rank() == 0) { // one replica writes; the TP group joins in
      torchtp::save_checkpoint(
          (std::filesystem::path(a.out) / "checkpoint").string(), *gpt, &opt,
          {{"step", std::to_string(step)},
           {"seed", std::to_string(a.seed)},
           {"vocab", std::string(itos.begin(), itos.end())},
           // The model's shape, for examples/generate.
           {"seq", std::to_string(a.seq)},
           {"d_model", std::to_string(a.d_model)},
           {"heads", std::to_string(a.heads)},
           {"layers", std::to_string(a.layers)}});
    }
    world.barrier();
  };

  gpt->train();
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t tokens_per_step = int64_t(a.batch) * a.seq;
  for (int step = start; step < a.steps; ++step) {
    auto [x, y] = batch_for_step(corpus, a, step);
    const int64_t per = a.batch / dp;
    x = x.narrow(0, pg.data.rank() * per, per);
    y = y.narrow(0, pg.data.rank() * per, per);
    gpt->rng().reseed(a.seed * 7919 + step); // dropout: reproducible per step
    opt.zero_grad();
    auto loss = gpt->loss(x, y);
    loss.backward();
    torchtp::average_gradients(*gpt, pg.data);
    if (a.clip > 0) {
      torchtp::clip_grad_norm(*gpt, a.clip);
    }
    opt.step();
    // The replicas' losses differ; report their mean.
    auto l = loss.detach().to(torch::kDouble).reshape({1});
    pg.data.all_reduce(l);
    const double mean_loss = l.item<double>() / dp;
    if (lead) {
      csv << step + 1 << "," << mean_loss << "\n";
      if ((step + 1) % a.log_every == 0 || step + 1 == a.steps ||
          step == start) {
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                .count();
        const int done = step + 1 - start;
        std::printf(
            "step %4d/%d  loss %.4f  %7.0f tokens/s  ETA %s\n", step + 1,
            a.steps, mean_loss, done * tokens_per_step / secs,
            format_eta(secs / done * (a.steps - step - 1)).c_str());
        std::fflush(stdout);
      }
    }
    if (a.save_every > 0 && (step + 1) % a.save_every == 0 &&
        step + 1 < a.steps) {
      save(step + 1);
    }
  }
  if (lead) {
    csv.close();
  }
  save(a.steps);

  // Sample: full logits are gathered, and every rank draws the same
  // character from the same generator, so all ranks stay in step.
  gpt->eval();
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(a.seed + 99);
  std::string sample = "\n";
  auto context = torch::tensor({stoi['\n']}, torch::kLong).unsqueeze(0);
  for (int i = 0; i < a.sample_chars; ++i) {
    auto window = context.size(1) > a.seq
                      ? context.narrow(1, context.size(1) - a.seq, a.seq)
                      : context;
    // The inference path, on the whole window: it takes any length, also
    // under --sequence-parallel, which splits training sequences only.
    auto cache = gpt->make_cache();
    auto logits = torchtp::gather_from_tp_region(
                      gpt->forward_cached(window, cache, {}, /*last_only=*/true)
                          .select(1, 0),
                      pg.tensor, gpt->vocab_partition())
                      .narrow(-1, 0, gpt->options.vocab_size())
                      .to(torch::kFloat);
    auto probs = torch::softmax(logits / 0.8, -1);
    auto next = torch::multinomial(probs, 1, false, gen);
    sample.push_back(static_cast<char>(itos[next.item<int64_t>()]));
    context = torch::cat({context, next}, 1);
  }
  if (lead) {
    std::ofstream(std::filesystem::path(a.out) / "sample.txt") << sample;
    std::printf(
        "checkpoint: %s/checkpoint   loss curve: %s/loss.csv\n", a.out.c_str(),
        a.out.c_str());
    std::printf("sample:\n%s\n", sample.c_str());
  }
  return 0;
}

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "train_gpt", [&] { return run(argc, argv); });
}
