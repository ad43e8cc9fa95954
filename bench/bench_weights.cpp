// bench_weights: the products of decoding and prefill with float32,
// bfloat16 and int8 weights, on every path this CPU can take: the hand
// kernels (per instruction set, float32 too), LibTorch's own (OpenBLAS's
// sgemv and sgemm for float32, oneDNN's bfloat16 GEMM), and float32 tiles
// of the weight through sgemm. One process, all its
// intra-op threads, the weights of a GPT-2-small-shaped model (12 x
// [qkv 2304x768, proj 768x768, fc1 3072x768, fc2 768x3072] plus the tied
// output layer 50257x768), so the weights stream from memory as in a
// decode step. Prints ms per pass over all of them and the weight bytes
// read per second. Then the attention kernel of a decode step in every
// instruction set: one new token over 12 layers' key/value caches of the
// same shape (12 heads of 64), float32 or bfloat16, each layer its own
// cache so they too come from memory. Writes JSON.
//
//   torchtp-run --nproc-per-node 1 ./bench_weights [--rows 1,8,128]
//       [--positions 128,512,1000] [--repeats 5] [--json F]

#include "bench_util.h"
#include "guarded_main.h"
#include "detail/paged_attention.h"
#include "detail/products.h"
#include "detail/weight_kernels.h"

#include <torchtp/torchtp.h>

#include <torch/torch.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace d = torchtp::detail;

namespace {

struct Layer {
  torch::Tensor weight, scale;
};

std::vector<Layer> make_weights(const std::string& format) {
  torch::manual_seed(0);
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int i = 0; i < 12; ++i) {
    shapes.insert(
        shapes.end(), {{2304, 768}, {768, 768}, {3072, 768}, {768, 3072}});
  }
  shapes.push_back({50257, 768});
  std::vector<Layer> out;
  for (auto [n, k] : shapes) {
    auto w = torch::randn({n, k}) * 0.02;
    Layer l;
    if (format == "int8") {
      std::tie(l.weight, l.scale) = d::quantize_rows(w);
    } else {
      l.weight = format == "bfloat16" ? w.to(torch::kBFloat16) : w;
    }
    out.push_back(l);
  }
  return out;
}

int64_t bytes_of(const std::vector<Layer>& layers) {
  int64_t b = 0;
  for (const auto& l : layers) {
    b += l.weight.nbytes() + (l.scale.defined() ? l.scale.nbytes() : 0);
  }
  return b;
}

// ms of one decode step's attention (12 layers) with caches of `positions`
// positions stored as `cache_dtype`, and the cache bytes read per second.
std::pair<double, double> time_attention(
    torch::Dtype cache_dtype,
    int64_t positions,
    int repeats) {
  constexpr int64_t kLayers = 12, kHeads = 12, kHeadDim = 64;
  torch::manual_seed(0);
  std::vector<torch::Tensor> keys, values;
  for (int64_t l = 0; l < kLayers; ++l) {
    keys.push_back(
        torch::randn({1, kHeads, positions, kHeadDim}).to(cache_dtype));
    values.push_back(
        torch::randn({1, kHeads, positions, kHeadDim}).to(cache_dtype));
  }
  auto q = torch::randn({1, kHeads, kHeadDim});
  auto out = torch::empty_like(q);
  std::vector<int64_t> kv_of_head(kHeads), seq{0}, pos{positions - 1},
      table{0};
  for (int64_t h = 0; h < kHeads; ++h) {
    kv_of_head[h] = h;
  }
  d::PagedAttentionShape shape{1, kHeads, kHeads, kHeadDim, positions, 1};
  shape.slot_stride = kHeadDim;
  shape.head_stride = positions * kHeadDim;
  const double scale = 1.0 / std::sqrt(double(kHeadDim));
  auto step = [&] {
    for (int64_t l = 0; l < kLayers; ++l) {
      if (cache_dtype == torch::kFloat) {
        d::paged_attention<float>(
            q.data_ptr<float>(), keys[l].data_ptr<float>(),
            values[l].data_ptr<float>(), kv_of_head.data(), seq.data(),
            pos.data(), table.data(), scale, out.data_ptr<float>(), shape);
      } else {
        d::paged_attention<float, uint16_t>(
            q.data_ptr<float>(),
            reinterpret_cast<const uint16_t*>(keys[l].data_ptr()),
            reinterpret_cast<const uint16_t*>(values[l].data_ptr()),
            kv_of_head.data(), seq.data(), pos.data(), table.data(), scale,
            out.data_ptr<float>(), shape);
      }
    }
  };
  std::vector<double> times;
  for (int r = 0; r < repeats + 1; ++r) { // the first pass warms up
    const auto t0 = std::chrono::steady_clock::now();
    step();
    if (r > 0) {
      times.push_back(torchtp::bench::seconds_since(t0));
    }
  }
  const double seconds = torchtp::bench::median(times);
  int64_t bytes = 0;
  for (int64_t l = 0; l < kLayers; ++l) {
    bytes += keys[l].nbytes() + values[l].nbytes();
  }
  return {1e3 * seconds, bytes / seconds / 1e9};
}

int run(int argc, char** argv) {
  std::vector<int64_t> rows_list{1, 8, 128};
  std::vector<int64_t> positions_list{128, 512, 1000};
  int repeats = 5;
  std::string json_path = "bench_weights.json";
  CLI::App app(
      "Products with float32, bfloat16 and int8 weights of a GPT-2-small "
      "shape on every path this CPU can take, then the attention kernel of "
      "one decode step in every instruction set (one process, all "
      "threads)");
  app.add_option("--rows", rows_list, "activation rows (batch x tokens)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option(
         "--positions", positions_list,
         "cached positions for the attention kernel's table (0: none)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--repeats", repeats, "passes per row (median)")
      ->capture_default_str();
  app.add_option("--json", json_path, "output file")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  // Threads as a rank of its own host gets them (all cores for one).
  torchtp::Group world = torchtp::init_from_env();
  TORCH_CHECK(world.size() == 1, "bench_weights runs as one process");
  torch::NoGradGuard no_grad;

  torchtp::bench::print_header("bench_weights", 1);
  std::printf("# CPU kernel flags: %s\n", d::cpu_kernel_flags().c_str());
  const auto chosen = d::kernel_choice();
  // (format, path name, choice)
  struct Path {
    std::string format, name;
    d::KernelChoice choice;
  };
  // float32's "default" is what decoding takes (the hand kernels for up
  // to 16 rows, sgemm beyond): the other rows' vs_f32 is against it.
  // "libtorch" is OpenBLAS alone (sgemv for one row, sgemm for more).
  std::vector<Path> paths{
      {"float32", "default", chosen},
      {"float32", "libtorch", {chosen.isa, false, false}}};
  for (const std::string format : {"float32", "bfloat16", "int8"}) {
    for (auto isa : {d::Isa::avx512_bf16, d::Isa::avx512, d::Isa::avx2,
                     d::Isa::generic}) {
      // avx512_bf16 differs from avx512 for bfloat16 weights only.
      if (d::cpu_supports(isa) &&
          (isa != d::Isa::avx512_bf16 || format == "bfloat16")) {
        paths.push_back(
            {format, std::string("hand ") + d::isa_name(isa),
             {isa, true, chosen.native_bfloat16_gemm}});
      }
    }
    if (format == "float32") {
      continue; // its LibTorch path is above
    }
    paths.push_back(
        {format, "float32 tiles", {chosen.isa, false, false}});
    if (format == "bfloat16") {
      paths.push_back({format, "libtorch bf16", {chosen.isa, false, true}});
    }
  }
  std::printf(
      "%-9s %-15s %5s %10s %9s %8s\n", "weights", "path", "rows", "ms/pass",
      "GB/s", "vs_f32");
  nlohmann::json rows_json = nlohmann::json::array();
  std::map<int64_t, double> float32_ms;
  std::string current_format;
  std::vector<Layer> layers;
  for (const auto& p : paths) {
    if (p.format != current_format) {
      layers = make_weights(p.format);
      current_format = p.format;
    }
    const int64_t bytes = bytes_of(layers);
    const auto previous = d::set_kernel_choice(p.choice);
    for (const int64_t rows : rows_list) {
      if (p.name.rfind("hand ", 0) == 0 && rows > d::kSmallRows &&
          p.format != "int8") {
        continue; // the hand kernels take that many rows of int8 only
      }
      const auto act = p.format == "bfloat16" ? torch::kBFloat16 : torch::kFloat;
      auto x = torch::randn({rows, 768}).to(act);
      auto x_wide = torch::randn({rows, 3072}).to(act);
      // The generic kernel takes one float32 row only when products must
      // be batch-invariant (else sgemv): the guard forces it.
      const d::BatchInvariantProducts hand_float32(
          p.format == "float32" && p.name.rfind("hand ", 0) == 0);
      std::vector<double> times;
      for (int r = 0; r < repeats + 1; ++r) { // the first pass warms up
        const auto t0 = std::chrono::steady_clock::now();
        for (const auto& l : layers) {
          const auto& in = l.weight.size(1) == 768 ? x : x_wide;
          auto y = d::linear(in, l.weight, torch::Tensor(), l.scale);
        }
        if (r > 0) {
          times.push_back(torchtp::bench::seconds_since(t0));
        }
      }
      const double ms = 1e3 * torchtp::bench::median(times);
      if (p.format == "float32" && p.name == "default") {
        float32_ms[rows] = ms;
      }
      const double gbs = bytes / (ms * 1e-3) / 1e9;
      const double ratio = float32_ms.count(rows) ? ms / float32_ms[rows] : 0;
      std::printf(
          "%-9s %-15s %5lld %10.2f %9.1f %8.2f\n", p.format.c_str(),
          p.name.c_str(), static_cast<long long>(rows), ms, gbs, ratio);
      std::fflush(stdout);
      rows_json.push_back(
          {{"weights", p.format},
           {"path", p.name},
           {"rows", rows},
           {"ms_per_pass", ms},
           {"weight_bytes", bytes},
           {"weight_gb_per_s", gbs},
           {"vs_float32", ratio}});
    }
    d::set_kernel_choice(previous);
  }
  nlohmann::json attention_json = nlohmann::json::array();
  positions_list.erase(
      std::remove_if(
          positions_list.begin(), positions_list.end(),
          [](int64_t p) { return p <= 0; }),
      positions_list.end());
  if (!positions_list.empty()) {
    std::printf(
        "\n# attention of one new token, 12 layers x 12 heads of 64, each "
        "layer's cache its own\n%-9s %-15s %9s %10s %9s\n",
        "cache", "path", "positions", "ms/step", "GB/s");
  }
  for (const auto cache_dtype : {torch::kFloat, torch::kBFloat16}) {
    for (const int64_t positions : positions_list) {
      for (auto isa : {d::Isa::avx512, d::Isa::avx2, d::Isa::generic}) {
        if (!d::cpu_supports(isa)) {
          continue;
        }
        auto choice = chosen;
        choice.isa = isa;
        const auto previous = d::set_kernel_choice(choice);
        const auto [ms, gbs] = time_attention(cache_dtype, positions, repeats);
        d::set_kernel_choice(previous);
        const std::string cache =
            cache_dtype == torch::kFloat ? "float32" : "bfloat16";
        std::printf(
            "%-9s %-15s %9lld %10.3f %9.1f\n", cache.c_str(),
            d::isa_name(isa), static_cast<long long>(positions), ms, gbs);
        std::fflush(stdout);
        attention_json.push_back(
            {{"cache", cache},
             {"path", d::isa_name(isa)},
             {"positions", positions},
             {"ms_per_step", ms},
             {"cache_gb_per_s", gbs}});
      }
    }
  }
  nlohmann::json out = torchtp::bench::header_json(1);
  out["cpu_kernel_flags"] = d::cpu_kernel_flags();
  out["repeats"] = repeats;
  out["rows"] = rows_json;
  out["attention"] = attention_json;
  std::ofstream(json_path) << out.dump(2) << "\n";
  std::printf("wrote %s\n", json_path.c_str());
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  return torchtp::tools::guarded_main(
      "bench_weights", [&] { return run(argc, argv); });
}
