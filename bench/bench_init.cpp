// bench_init: the memory a rank needs to build a GPT, at the world size it
// is started with. The default shape is GPT-2-medium's width at 8 layers
// (d_model 1024, 16 heads, vocabulary 50257): its vocab-parallel embedding
// and output layer are the largest layers.
//
//   torchtp-run --nproc-per-node N ./bench_init [--dtypes float32,bfloat16]
//       [--d-model 1024] [--layers 8] [--heads 16] [--vocab 50257]
//       [--seq 1024] [--json F]
//
// Per rank and dtype: resident memory before construction, its peak during
// construction (VmHWM, reset before each model through
// /proc/self/clear_refs) and its rise ("peak-before", which also counts
// libtorch's code paged in, ~5 MiB), the rise of anonymous memory that
// stays after ("anon+": the parameters, and any heap left resident), this
// rank's parameters, and the target of issue 9: the full model's
// parameters / N plus this rank's largest parameter shard.

#include <torchtp/torchtp.h>

#include "bench_util.h"
#include "guarded_main.h"

#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// One rank's figures for one model, in MiB (seconds for the last).
struct Figures {
  double rss_before, peak, rss_after, params, full_params, largest_shard,
      build_s, anon_before, anon_after, file_before, file_after;
  std::vector<double> as_vector() const {
    return {rss_before,  peak,          rss_after, params,
            full_params, largest_shard, build_s,   anon_before,
            anon_after,  file_before,   file_after};
  }
};

Figures build_once(
    const torchtp::GPTOptions& options, const torchtp::Group& world) {
  Figures f{};
  // Memory freed by an earlier model goes back to the system first, so the
  // figures start from the same place.
  malloc_trim(0);
  world.barrier();
  TORCH_CHECK(
      torchtp::bench::reset_peak_resident(),
      "bench_init: cannot reset the peak (write /proc/self/clear_refs)");
  f.rss_before = torchtp::bench::resident_mib("VmRSS");
  f.anon_before = torchtp::bench::resident_mib("RssAnon");
  f.file_before = torchtp::bench::resident_mib("RssFile");
  const auto t0 = std::chrono::steady_clock::now();
  torch::manual_seed(0);
  torchtp::GPT gpt(options);
  f.build_s = torchtp::bench::seconds_since(t0);
  f.peak = torchtp::bench::resident_mib("VmHWM");
  f.rss_after = torchtp::bench::resident_mib("VmRSS");
  f.anon_after = torchtp::bench::resident_mib("RssAnon");
  f.file_after = torchtp::bench::resident_mib("RssFile");
  const auto specs = torchtp::shard_specs(*gpt);
  for (const auto& p : gpt->named_parameters()) {
    const auto& t = p.value();
    const double local = t.numel() * t.element_size() / kMiB;
    const auto full =
        torchtp::full_shape(t.sizes(), specs.at(p.key()), gpt->group());
    int64_t full_numel = 1;
    for (const auto n : full) {
      full_numel *= n;
    }
    f.params += local;
    f.full_params += full_numel * t.element_size() / kMiB;
    f.largest_shard = std::max(f.largest_shard, local);
  }
  return f;
}

int run(int argc, char** argv) {
  std::vector<std::string> dtypes{"float32", "bfloat16"};
  std::string json_path = "bench_init.json";
  int64_t d_model = 1024, layers = 8, heads = 16, vocab = 50257, seq = 1024;
  CLI::App app(
      "Peak resident memory of building a GPT on each rank at this world "
      "size");
  app.add_option("--dtypes", dtypes, "float32, bfloat16, float64")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--d-model", d_model, "model width")->capture_default_str();
  app.add_option("--layers", layers, "transformer layers")
      ->capture_default_str();
  app.add_option("--heads", heads, "attention heads")->capture_default_str();
  app.add_option("--vocab", vocab, "vocabulary")->capture_default_str();
  app.add_option("--seq", seq, "max_seq_len")->capture_default_str();
  app.add_option("--json", json_path, "output file")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  torchtp::Group world = torchtp::init_from_env();
  const int ws = static_cast<int>(world.size());
  const bool root = world.rank() == 0;
  if (root) {
    torchtp::bench::print_header("bench_init", ws);
    std::printf(
        "# GPT d_model %lld, %lld layers, %lld heads, vocab %lld, seq %lld; "
        "MiB per rank; target = full params / %d + largest shard\n",
        static_cast<long long>(d_model), static_cast<long long>(layers),
        static_cast<long long>(heads), static_cast<long long>(vocab),
        static_cast<long long>(seq), ws);
    std::printf(
        "%-9s %4s %10s %9s %11s %8s %10s %10s %9s %8s\n", "dtype", "rank",
        "rss_before", "peak", "peak-before", "anon+", "params", "target",
        "largest", "build_s");
  }
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& dtype_name : dtypes) {
    const auto options = torchtp::GPTOptions(vocab, seq)
                             .d_model(d_model)
                             .num_heads(heads)
                             .num_layers(layers)
                             .group(world)
                             .dtype(torchtp::dtype_from_name(dtype_name));
    const auto mine = build_once(options, world);
    auto all = world.all_gather(
        torch::tensor(mine.as_vector(), torch::kDouble).unsqueeze(0), 0);
    for (int r = 0; r < ws; ++r) {
      auto row = all[r];
      const Figures f{
          row[0].item<double>(), row[1].item<double>(), row[2].item<double>(),
          row[3].item<double>(), row[4].item<double>(), row[5].item<double>(),
          row[6].item<double>(), row[7].item<double>(), row[8].item<double>(),
          row[9].item<double>(), row[10].item<double>()};
      const double target = f.full_params / ws + f.largest_shard;
      rows.push_back(
          {{"dtype", dtype_name},
           {"rank", r},
           {"rss_before_mib", f.rss_before},
           {"peak_rss_mib", f.peak},
           {"peak_minus_before_mib", f.peak - f.rss_before},
           {"rss_after_mib", f.rss_after},
           {"params_mib", f.params},
           {"full_params_mib", f.full_params},
           {"largest_shard_mib", f.largest_shard},
           {"target_mib", target},
           {"within_target", f.peak - f.rss_before <= target},
           {"build_s", f.build_s},
           {"anon_before_mib", f.anon_before},
           {"anon_after_mib", f.anon_after},
           {"file_before_mib", f.file_before},
           {"file_after_mib", f.file_after}});
      if (root) {
        std::printf(
            "%-9s %4d %10.0f %9.0f %11.0f %8.0f %10.0f %10.0f %9.0f %8.2f\n",
            dtype_name.c_str(), r, f.rss_before, f.peak, f.peak - f.rss_before,
            f.anon_after - f.anon_before, f.params, target, f.largest_shard,
            f.build_s);
      }
    }
    if (root) {
      std::fflush(stdout);
    }
  }
  if (root) {
    nlohmann::json out = torchtp::bench::header_json(ws);
    out["shape"] = {
        {"d_model", d_model},
        {"layers", layers},
        {"heads", heads},
        {"vocab", vocab},
        {"seq", seq}};
    out["rows"] = rows;
    std::ofstream(json_path) << out.dump(2) << "\n";
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "bench_init", [&] { return run(argc, argv); });
}
