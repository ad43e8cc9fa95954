// bfloat16 and int8 weights: the hand kernels in every instruction set this
// CPU has, and LibTorch's paths they fall back to, against float64
// computed from the same (widened or dequantized) weights; the parallel
// layers and whole GPT-2- and Llama-layout models at this world size
// against an unsharded float64 model holding the dequantized weights; int8
// against float32 over 1,000 decode steps.
//
// Tolerances follow from the arithmetic: a float32 dot product of k terms
// is within about k * 2^-24 * sum |x_i w_i| of the exact one, and a result
// rounded to bfloat16 within 2^-9 of its magnitude more.

#include "reference.h"

#include "detail/products.h"
#include "detail/weight_kernels.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

using torchtp::testing::world;
namespace d = torchtp::detail;

namespace {

constexpr double kFloat32Eps = 1.0 / (1 << 23); // 2^-23: twice 2^-24
constexpr double kBfloat16Eps = 1.0 / (1 << 8); // twice bfloat16's 2^-9

// Every path this CPU can take: the hand kernels in each instruction set it
// has, and none (LibTorch alone) with bfloat16 GEMMs widened to float32 and,
// where the CPU has native bfloat16, through oneDNN.
std::vector<d::KernelChoice> every_choice() {
  std::vector<d::KernelChoice> out;
  const bool native = d::cpu_has_native_bfloat16();
  for (auto isa : {d::Isa::generic, d::Isa::avx2, d::Isa::avx512,
                   d::Isa::avx512_bf16}) {
    if (d::cpu_supports(isa)) {
      out.push_back({isa, true, native});
    }
  }
  out.push_back({d::Isa::generic, false, false});
  if (native) {
    out.push_back({d::Isa::generic, false, true});
  }
  return out;
}

std::string describe(const d::KernelChoice& c) {
  return std::string(c.hand_kernels ? d::isa_name(c.isa) : "library") +
         (c.native_bfloat16_gemm ? " + native bf16 GEMM" : " + float32 GEMM");
}

struct UseChoice {
  explicit UseChoice(const d::KernelChoice& c)
      : previous(d::set_kernel_choice(c)) {}
  ~UseChoice() {
    d::set_kernel_choice(previous);
  }
  UseChoice(const UseChoice&) = delete;
  UseChoice& operator=(const UseChoice&) = delete;
  d::KernelChoice previous;
};

// |actual - expected| <= bound elementwise, else the worst element.
::testing::AssertionResult within(
    const torch::Tensor& actual,
    const torch::Tensor& expected,
    const torch::Tensor& bound,
    const std::string& what) {
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure()
           << what << ": shape " << actual.sizes() << " != " << expected.sizes();
  }
  const auto err = (actual.to(torch::kDouble) - expected).abs();
  const auto excess = err - bound;
  if (excess.max().item<double>() <= 0) {
    return ::testing::AssertionSuccess();
  }
  const auto i = excess.reshape({-1}).argmax().item<int64_t>();
  return ::testing::AssertionFailure()
         << what << ": |diff| " << err.reshape({-1})[i].item<double>()
         << " > bound " << bound.reshape({-1})[i].item<double>()
         << " at flat index " << i << " " << world().rank_label();
}

// x [rows, k] W^T for float64 operands, and sum |x_i w_i| per output.
std::pair<torch::Tensor, torch::Tensor> product_and_magnitude(
    const torch::Tensor& x, const torch::Tensor& w) {
  return {torch::matmul(x, w.t()), torch::matmul(x.abs(), w.abs().t())};
}

TEST(WeightKernels, EveryInstructionSetMatchesFloat64) {
  torch::manual_seed(11);
  std::string tested;
  for (auto isa : {d::Isa::generic, d::Isa::avx2, d::Isa::avx512,
                   d::Isa::avx512_bf16}) {
    if (!d::cpu_supports(isa)) {
      continue; // this CPU cannot run it; the others are still tested
    }
    tested += std::string(tested.empty() ? "" : ", ") + d::isa_name(isa);
    for (const auto type :
         {d::WeightType::bfloat16, d::WeightType::int8,
          d::WeightType::float32}) {
      const bool int8 = type == d::WeightType::int8;
      const bool f32 = type == d::WeightType::float32;
      // 40: more than one slice of 16 (an int8 prefill).
      for (const int64_t rows : {1, 2, 3, 4, 5, 8, 16, 40}) {
        // k: whole vectors, a tail after them, and a layer's width.
        for (auto [k, n] : std::vector<std::pair<int64_t, int64_t>>{
                 {16, 8}, {37, 13}, {768, 70}}) {
          const auto x = torch::randn({rows, k});
          torch::Tensor w, widened, scale;
          if (f32) {
            w = torch::randn({n, k});
            widened = w.to(torch::kDouble);
          } else if (int8) {
            w = torch::randint(-127, 128, {n, k}).to(torch::kChar);
            scale = torch::rand({n}) + 0.5;
            widened = w.to(torch::kDouble) * scale.to(torch::kDouble).unsqueeze(1);
          } else {
            w = torch::randn({n, k}).to(torch::kBFloat16);
            widened = w.to(torch::kDouble);
          }
          const auto bias = torch::randn({n});
          auto y = torch::empty({rows, n});
          // avx512_bf16's dot products take bfloat16 activations as
          // stored (a bfloat16 model's): exact products, float32 sums.
          const bool dot = isa == d::Isa::avx512_bf16 &&
              type == d::WeightType::bfloat16;
          const auto x_used = dot ? x.to(torch::kBFloat16) : x;
          if (dot) {
            d::small_rows_gemm_bfloat16(
                reinterpret_cast<const uint16_t*>(x_used.data_ptr()), rows, k,
                reinterpret_cast<const uint16_t*>(w.data_ptr()),
                bias.data_ptr<float>(), y.data_ptr<float>(), n);
          } else {
            d::small_rows_gemm(
                isa, x.data_ptr<float>(), rows, k, w.data_ptr(), type,
                int8 ? scale.data_ptr<float>() : nullptr,
                bias.data_ptr<float>(), y.data_ptr<float>(), n);
            // Each output is summed and scaled in the same order whatever
            // the row count: the first and the last row alone give the
            // same bits (batch-invariant serving relies on it).
            for (const int64_t r : {int64_t{0}, rows - 1}) {
              auto alone = torch::empty({1, n});
              d::small_rows_gemm(
                  isa, x[r].data_ptr<float>(), 1, k, w.data_ptr(), type,
                  int8 ? scale.data_ptr<float>() : nullptr,
                  bias.data_ptr<float>(), alone.data_ptr<float>(), n);
              EXPECT_TRUE(torch::equal(alone[0], y[r]))
                  << d::isa_name(isa)
                  << (int8 ? " int8" : f32 ? " f32" : " bf16") << " rows "
                  << rows << " k " << k << ": row " << r << " alone differs";
            }
          }
          auto [ref, mag] =
              product_and_magnitude(x_used.to(torch::kDouble), widened);
          ref = ref + bias.to(torch::kDouble);
          const auto bound =
              (k + 4) * kFloat32Eps * (mag + bias.abs().to(torch::kDouble));
          EXPECT_TRUE(within(
              y, ref, bound,
              std::string(d::isa_name(isa)) +
                  (int8 ? " int8" : f32 ? " f32" : " bf16") +
                  " rows " + std::to_string(rows) + " k " + std::to_string(k)));
        }
      }
    }
  }
  if (world().rank() == 0) {
    std::printf(
        "[ kernels ] tested: %s (CPU flags: %s)\n", tested.c_str(),
        d::cpu_kernel_flags().c_str());
  }
}

// The outputs go over the threads in blocks of 64 rows, each thread taking
// the rest of the others' shares once its own is done: every output is
// written once, with the same bits, at any number of threads (more threads
// than cores, so that some finish late and others take their blocks).
TEST(WeightKernels, EveryThreadCountWritesEachOutputOnceWithTheSameBits) {
  torch::manual_seed(12);
  const int before = at::get_num_threads();
  const int64_t k = 96;
  const auto isa =
      d::cpu_supports(d::Isa::avx2) ? d::Isa::avx2 : d::Isa::generic;
  struct Case {
    torch::Tensor x, w, scale, one_thread;
  };
  std::vector<Case> cases;
  for (const int64_t n : {1, 63, 64, 65, 7 * 64 + 5, 40 * 64 + 3}) {
    for (const int64_t rows : {1, 3}) {
      cases.push_back(
          {torch::randn({rows, k}),
           torch::randint(-127, 128, {n, k}).to(torch::kChar),
           torch::rand({n}) + 0.5, torch::Tensor()});
    }
  }
  auto product = [&](const Case& c) {
    const int64_t rows = c.x.size(0), n = c.w.size(0);
    auto y = torch::full({rows, n}, std::nan(""));
    d::small_rows_gemm(
        isa, c.x.data_ptr<float>(), rows, k, c.w.data_ptr(),
        d::WeightType::int8, c.scale.data_ptr<float>(), nullptr,
        y.data_ptr<float>(), n);
    return y;
  };
  at::set_num_threads(1);
  for (auto& c : cases) {
    c.one_thread = product(c);
    const auto widened =
        c.w.to(torch::kDouble) * c.scale.to(torch::kDouble).unsqueeze(1);
    auto [ref, mag] = product_and_magnitude(c.x.to(torch::kDouble), widened);
    EXPECT_TRUE(within(
        c.one_thread, ref, (k + 4) * kFloat32Eps * mag, "one thread"));
  }
  for (const int threads : {2, 3}) {
    at::set_num_threads(threads);
    for (int repeat = 0; repeat < 3; ++repeat) {
      for (const auto& c : cases) {
        EXPECT_TRUE(torch::equal(product(c), c.one_thread))
            << threads << " threads, n " << c.w.size(0) << ", rows "
            << c.x.size(0)
            << ": differs from one thread (NaN: an output never written) "
            << world().rank_label();
      }
    }
  }
  at::set_num_threads(before);
}

TEST(WeightKernels, LinearTakesEveryPathToTheSameProduct) {
  torch::manual_seed(12);
  const int64_t k = 96, n = 40;
  for (const auto& choice : every_choice()) {
    UseChoice use(choice);
    // Rows the hand kernels take (1, 5, 16) and GEMMs (17, 40).
    for (const int64_t rows : {1, 5, 16, 17, 40}) {
      const auto tag = describe(choice) + ", rows " + std::to_string(rows);
      // bfloat16 weight and activations, output rounded to bfloat16.
      {
        const auto x = torch::randn({rows, k}).to(torch::kBFloat16);
        const auto w = torch::randn({n, k}).to(torch::kBFloat16);
        const auto b = torch::randn({n}).to(torch::kBFloat16);
        torch::NoGradGuard no_grad;
        const auto y = d::linear(x, w, b);
        ASSERT_EQ(y.scalar_type(), torch::kBFloat16) << tag;
        auto [ref, mag] = product_and_magnitude(
            x.to(torch::kDouble), w.to(torch::kDouble));
        ref = ref + b.to(torch::kDouble);
        const auto bound = kBfloat16Eps * ref.abs() +
                           (k + 4) * kFloat32Eps * (mag + b.abs().to(torch::kDouble));
        EXPECT_TRUE(within(y, ref, bound, "bf16 " + tag));
      }
      // float32 weight and activations (the hand kernels take 1 to 16
      // rows, but for the generic kernel, which leaves them to OpenBLAS:
      // gemv for one, sgemm more).
      {
        const auto x = torch::randn({rows, k});
        const auto w = torch::randn({n, k});
        const auto b = torch::randn({n});
        torch::NoGradGuard no_grad;
        const auto y = d::linear(x, w, b);
        auto [ref, mag] = product_and_magnitude(
            x.to(torch::kDouble), w.to(torch::kDouble));
        ref = ref + b.to(torch::kDouble);
        const auto bound =
            (k + 4) * kFloat32Eps * (mag + b.abs().to(torch::kDouble));
        EXPECT_TRUE(within(y, ref, bound, "f32 " + tag));
        // Decoding's rows need no guard to be batch-invariant: a row alone
        // (one token at batch 1) gives the bits it gives among up to 16.
        if (choice.hand_kernels && choice.isa != d::Isa::generic &&
            rows <= d::kSmallRows) {
          const auto first = d::linear(x.narrow(0, 0, 1), w, b);
          EXPECT_TRUE(torch::equal(first[0], y[0])) << "f32 one row " << tag;
        }
        // Batch-invariant products (the hand kernels): a row gives the
        // same bits alone and among any number of rows, and the product
        // is still right.
        if (choice.hand_kernels) {
          d::BatchInvariantProducts invariant;
          const auto all = d::linear(x, w, b);
          const auto first = d::linear(x.narrow(0, 0, 1), w, b);
          EXPECT_TRUE(torch::equal(first[0], all[0]))
              << "f32 invariant " << tag;
          EXPECT_TRUE(within(all, ref, bound, "f32 invariant " + tag));
        }
      }
      // int8 weight with scales; float32 and bfloat16 activations.
      for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
        const auto x = torch::randn({rows, 1, k}).to(dtype); // 3-d input
        const auto q = torch::randint(-127, 128, {n, k}).to(torch::kChar);
        const auto scale = torch::rand({n}) / 100 + 1e-3;
        const auto b = torch::randn({n}).to(dtype);
        torch::NoGradGuard no_grad;
        const auto y = d::linear(x, q, b, scale);
        ASSERT_EQ(y.scalar_type(), dtype) << tag;
        ASSERT_EQ(y.sizes(), torch::IntArrayRef({rows, 1, n})) << tag;
        const auto widened = d::dequantize_rows(q, scale, torch::kDouble);
        auto [ref, mag] = product_and_magnitude(
            x.reshape({rows, k}).to(torch::kDouble), widened);
        ref = ref + b.to(torch::kDouble);
        auto bound = (k + 4) * kFloat32Eps * (mag + b.abs().to(torch::kDouble));
        if (dtype == torch::kBFloat16) {
          bound = bound + kBfloat16Eps * ref.abs();
        }
        EXPECT_TRUE(within(
            y.reshape({rows, n}), ref, bound,
            std::string("int8, ") + c10::toString(dtype) + " " + tag));
      }
    }
  }
}

TEST(WeightKernels, Bfloat16GradientsOnEveryPath) {
  torch::manual_seed(13);
  const int64_t rows = 24, k = 64, n = 48;
  for (const auto& choice : every_choice()) {
    UseChoice use(choice);
    const auto x = torch::randn({2, rows / 2, k}).to(torch::kBFloat16).requires_grad_();
    const auto w = torch::randn({n, k}).to(torch::kBFloat16).requires_grad_();
    const auto b = torch::randn({n}).to(torch::kBFloat16).requires_grad_();
    const auto g = torch::randn({2, rows / 2, n});
    (d::linear(x, w, b).to(torch::kFloat) * g).sum().backward();
    // What the gradients are, in float64, from the bfloat16 values; each
    // is rounded to bfloat16 once, its terms summed in float32 at least.
    const auto g2 = g.reshape({rows, n}).to(torch::kDouble);
    const auto x2 = x.detach().reshape({rows, k}).to(torch::kDouble);
    const auto w2 = w.detach().to(torch::kDouble);
    auto check = [&](const torch::Tensor& got, const torch::Tensor& ref,
                     const torch::Tensor& mag, int64_t terms, const char* what) {
      const auto bound = kBfloat16Eps * (ref.abs() + mag) +
                         (terms + 4) * kFloat32Eps * mag;
      EXPECT_TRUE(within(got, ref, bound, std::string(what) + ", " + describe(choice)));
    };
    check(x.grad().reshape({rows, k}), g2.mm(w2), g2.abs().mm(w2.abs()), n, "grad x");
    check(w.grad(), g2.t().mm(x2), g2.abs().t().mm(x2.abs()), rows, "grad w");
    check(b.grad(), g2.sum(0), g2.abs().sum(0), rows, "grad b");
  }
}

TEST(WeightKernels, TheEnvironmentChoosesThePath) {
  const auto& c = d::kernel_choice();
  const char* kernels = std::getenv("TORCHTP_KERNELS");
  if (kernels == nullptr || *kernels == 0) {
    // The best this CPU has.
    EXPECT_TRUE(c.hand_kernels);
    EXPECT_EQ(
        c.isa, d::cpu_supports(d::Isa::avx512_bf16) ? d::Isa::avx512_bf16
               : d::cpu_supports(d::Isa::avx512)    ? d::Isa::avx512
               : d::cpu_supports(d::Isa::avx2)      ? d::Isa::avx2
                                                    : d::Isa::generic);
  } else if (std::string(kernels) == "library") {
    EXPECT_FALSE(c.hand_kernels);
  } else {
    EXPECT_TRUE(c.hand_kernels);
    EXPECT_STREQ(d::isa_name(c.isa), kernels);
  }
  const char* gemm = std::getenv("TORCHTP_BF16_GEMM");
  EXPECT_EQ(
      c.native_bfloat16_gemm,
      gemm != nullptr && *gemm != 0 ? std::string(gemm) == "native"
                                    : d::cpu_has_native_bfloat16());
}

TEST(WeightKernels, RefusesAnInt8WeightWithoutScales) {
  const auto q = torch::zeros({4, 8}, torch::kChar);
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] { d::linear(torch::randn({1, 8}), q, {}); },
      {"int8 weight", "one scale per row", "none"}));
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] { d::linear(torch::randn({1, 8}), q, {}, torch::ones({3})); },
      {"int8 weight", "[3]"}));
}

TEST(WeightKernels, QuantizesRowsSymmetrically) {
  auto w = torch::tensor({{0.0, 0.0, 0.0}, {1.0, -2.54, 0.5}}, torch::kFloat);
  auto [q, scale] = d::quantize_rows(w);
  EXPECT_TRUE(torch::equal(
      q, torch::tensor({{0, 0, 0}, {50, -127, 25}}, torch::kChar)));
  EXPECT_FLOAT_EQ(scale[0].item<float>(), 1.0f); // a zero row
  EXPECT_FLOAT_EQ(scale[1].item<float>(), 2.54f / 127);
}

// The parallel layers, int8 and bfloat16, against float64 from the full
// weight the unsharded torch::nn::Linear draws (quantized whole).
TEST(ParallelLayers, Int8AndBfloat16MatchTheWholeWeight) {
  const auto g = world();
  const int64_t in = 48, out = 36; // divisible by 1, 2, 3 and 4
  for (const auto& choice : every_choice()) {
    UseChoice use(choice);
    for (const bool int8 : {true, false}) {
      for (const bool row : {false, true}) {
        const auto dtype = int8 ? torch::kFloat : torch::kBFloat16;
        torch::manual_seed(21);
        auto full = torchtp::testing::full_linear_draw(in, out, true, dtype);
        torch::manual_seed(21);
        torch::Tensor y_small, y_large, scale;
        torch::Tensor w_used = full.w.to(torch::kDouble);
        torch::Tensor expected_scale;
        if (int8) {
          auto [q, s] = d::quantize_rows(full.w);
          w_used = d::dequantize_rows(q, s, torch::kDouble);
          expected_scale = s;
        }
        torch::manual_seed(22);
        const auto x_small = torch::randn({1, 2, in}).to(dtype); // 2 rows
        const auto x_large = torch::randn({3, 7, in}).to(dtype); // 21 rows
        torch::NoGradGuard no_grad;
        torch::manual_seed(21);
        if (row) {
          torchtp::RowParallelLinear layer(
              torchtp::RowParallelLinearOptions(in, out).group(g).dtype(dtype));
          if (int8) {
            layer->quantize_int8();
            // Whole rows' scales, the same on every rank.
            EXPECT_TRUE(torch::equal(layer->weight_scale, expected_scale))
                << g.rank_label();
          }
          y_small = layer(x_small);
          y_large = layer(x_large);
        } else {
          torchtp::ColumnParallelLinear layer(
              torchtp::ColumnParallelLinearOptions(in, out)
                  .gather_output(true)
                  .group(g)
                  .dtype(dtype));
          if (int8) {
            layer->quantize_int8();
            const auto& p = layer->output_partition();
            EXPECT_TRUE(torch::equal(
                layer->weight_scale,
                expected_scale.narrow(0, p.local_offset(), p.local_size())))
                << g.rank_label();
          }
          y_small = layer(x_small);
          y_large = layer(x_large);
        }
        const auto tag = std::string(row ? "row" : "column") +
                         (int8 ? " int8, " : " bf16, ") + describe(choice);
        for (const auto& [x, y] : {std::pair{x_small, y_small}, std::pair{x_large, y_large}}) {
          auto [ref, mag] =
              product_and_magnitude(x.to(torch::kDouble), w_used);
          const auto b = full.b.to(torch::kDouble);
          ref = ref + b;
          mag = mag + b.abs();
          // bfloat16: each rank's partial (row) or output (column) rounded
          // once, the sum over ranks once more.
          auto bound = (in + 4) * kFloat32Eps * mag;
          if (!int8) {
            bound = bound + 3 * kBfloat16Eps * mag;
          }
          EXPECT_TRUE(within(y, ref, bound, tag));
        }
      }
    }
  }
}

// Small models whose full weights are the same at world sizes 1-4.
torchtp::GPTOptions gpt2_like() {
  return torchtp::GPTOptions(/*vocab_size=*/40, /*max_seq_len=*/24)
      .d_model(48)
      .num_heads(12)
      .num_layers(2)
      .vocab_pad_multiple(12);
}

torchtp::GPTOptions llama_like() {
  return torchtp::GPTOptions(40, 24)
      .d_model(48)
      .num_heads(12)
      .num_kv_heads(2) // 4 ranks: 3 query heads each, pairs share a head
      .num_layers(2)
      .ffn_hidden(72)
      .norm(torchtp::NormType::rms_norm)
      .rotary(torchtp::RotaryOptions().theta(10000.0))
      .gated_mlp(true)
      .activation(torchtp::Activation::silu)
      .bias(false)
      .tie_embeddings(false)
      .vocab_pad_multiple(12);
}

torchtp::GPT build(
    torchtp::GPTOptions o, const torchtp::Group& g, torch::Dtype dtype, bool int8) {
  torch::manual_seed(31);
  torchtp::GPT gpt(o.group(g).dtype(dtype));
  gpt->eval();
  if (int8) {
    torchtp::quantize_int8(*gpt);
  }
  return gpt;
}

// An unsharded float64 copy of an unsharded model: int8 weights
// dequantized, bfloat16 widened. The weights it computes with are exactly
// those the quantized or bfloat16 model serves.
torchtp::GPT widened_copy(
    torchtp::GPTOptions o, const torchtp::Group& single, torchtp::GPT& from) {
  auto ref = build(o, single, torch::kDouble, false);
  torch::NoGradGuard no_grad;
  auto buffers = from->named_buffers();
  for (auto& p : ref->named_parameters()) {
    const auto src = from->named_parameters()[p.key()];
    if (const auto* s = buffers.find(p.key() + "_scale")) {
      p.value().copy_(d::dequantize_rows(src, *s, torch::kDouble));
    } else {
      p.value().copy_(src.to(torch::kDouble));
    }
  }
  return ref;
}

// Logits over the real vocabulary of decoding `ids` one token at a time
// after a prompt of `prompt` tokens: [batch, steps, vocab].
torch::Tensor decode_logits(
    torchtp::GPT& gpt,
    const torch::Tensor& ids,
    int64_t prompt,
    c10::optional<torch::Dtype> kv_dtype = c10::nullopt) {
  torch::NoGradGuard no_grad;
  auto cache = gpt->make_cache(kv_dtype);
  std::vector<torch::Tensor> out;
  auto full = [&](const torch::Tensor& local) {
    return torchtp::gather_from_tp_region(
               local, gpt->group(), gpt->vocab_partition())
        .narrow(-1, 0, gpt->vocab_size())
        .to(torch::kDouble);
  };
  out.push_back(full(gpt->forward_cached(ids.narrow(1, 0, prompt), cache)).narrow(1, prompt - 1, 1));
  for (int64_t t = prompt; t < ids.size(1); ++t) {
    out.push_back(full(gpt->forward_cached(ids.narrow(1, t, 1), cache)));
  }
  return torch::cat(out, 1);
}

// `logits` within `tolerance` of the float64 reference `expected` (both
// [batch, steps, vocab]), and where the reference's best token leads by
// more than twice the tolerance, the served model chooses it. Rank 0
// prints the largest difference.
void expect_logits_match(
    const torch::Tensor& logits,
    const torch::Tensor& expected,
    double tol,
    const std::string& tag) {
  const auto& g = world();
  const double scale = expected.abs().max().item<double>();
  const double err = (logits - expected).abs().max().item<double>();
  EXPECT_LE(err, tol) << tag << " " << g.rank_label();
  const auto [top_values, top_ids] = expected.topk(2, -1);
  const auto lead = top_values.select(-1, 0) - top_values.select(-1, 1);
  const auto decided = lead > 2 * tol;
  const auto agree = logits.argmax(-1) == top_ids.select(-1, 0);
  EXPECT_TRUE((agree | decided.logical_not()).all().item<bool>())
      << tag << " " << g.rank_label();
  if (g.rank() == 0) {
    std::printf(
        "[ %s ] max |logit diff| %.3g (tolerance %.3g, scale %.3g); "
        "%lld of %lld steps decided\n",
        tag.c_str(), err, tol, scale,
        static_cast<long long>(decided.sum().item<int64_t>()),
        static_cast<long long>(decided.numel()));
  }
}

TEST(QuantizedGPT, DecodeMatchesTheWidenedFloat64ModelAtThisWorldSize) {
  const auto g = world();
  const auto single = g.split(g.rank()); // each rank alone: the reference
  for (const auto& [family, options] :
       {std::pair{"gpt2", gpt2_like()}, std::pair{"llama", llama_like()}}) {
    for (const bool int8 : {true, false}) {
      const auto dtype = int8 ? torch::kFloat : torch::kBFloat16;
      const std::string tag = std::string(family) + (int8 ? " int8" : " bf16");
      auto model = build(options, g, dtype, int8);
      auto alone = build(options, single, dtype, int8);
      auto ref = widened_copy(options, single, alone);
      torch::manual_seed(32);
      const auto prompts = torch::randint(40, {2, 5});
      // Greedy tokens at this world size are those of the same dtype alone
      // (only the order of the sums differs).
      std::vector<std::vector<int64_t>> p(2);
      for (int i = 0; i < 2; ++i) {
        p[i].assign(prompts[i].data_ptr<int64_t>(), prompts[i].data_ptr<int64_t>() + 5);
      }
      const auto o = torchtp::GenerateOptions().max_new_tokens(8);
      const auto got = torchtp::generate(*model, p, o);
      const auto want = torchtp::generate(*alone, p, o);
      EXPECT_EQ(got.tokens, want.tokens) << tag << " " << g.rank_label();
      // Logits of every decode step against float64 with the same weights,
      // on the reference's own greedy continuation.
      const auto ref_gen = torchtp::generate(*ref, p, o);
      auto ids = torch::cat(
          {prompts, torch::tensor(ref_gen.tokens[0]).view({1, -1})
                        .repeat({2, 1})},
          1);
      ids[1].narrow(0, 5, 8).copy_(torch::tensor(ref_gen.tokens[1]));
      const auto logits = decode_logits(model, ids, 5);
      const auto expected = decode_logits(ref, ids, 5);
      // float32 activations: errors ~1e-6 of the logits' scale after two
      // layers; bfloat16 activations round every op (2^-9), and the
      // errors add up over the layers to about 1% of the scale.
      const double scale = expected.abs().max().item<double>();
      expect_logits_match(
          logits, expected, (int8 ? 1e-4 : 2e-2) * scale, tag);
    }
  }
}

// ---------------------------------------------------------------------------
// A bfloat16 key/value cache beside float32, float64 or int8 weights: each
// key and value rounded once when stored, and read as stored by both
// attention paths (the kernel without gradients, LibTorch's batched
// products with them).

// Both paths read the same rounded cache. In a float64 model the keys of a
// position are the same whichever call computed them (a bfloat16 rounding
// flips only within ~1e-16 of a tie), so a prompt of 20 tokens prefilled at
// once recording gradients (batched products) and the same tokens decoded
// one at a time without (the kernel, float32 arithmetic over the widened
// cache) give the same logits to float32 precision.
TEST(Bfloat16KeyValueCache, DecodingOneTokenAtATimeEqualsOneLongPrefill) {
  const auto g = world();
  for (const auto& [family, options] :
       {std::pair{"gpt2", gpt2_like()}, std::pair{"llama", llama_like()}}) {
    auto model = build(options, g, torch::kDouble, false);
    torch::manual_seed(33);
    const auto ids = torch::randint(40, {2, 20});
    auto once_cache = model->make_cache(torch::kBFloat16);
    auto once = model->forward_cached(ids, once_cache).detach();
    torch::NoGradGuard no_grad;
    ASSERT_EQ(once_cache.layers.front().k.scalar_type(), torch::kBFloat16);
    const auto stepped = decode_logits(model, ids, 1, torch::kBFloat16);
    const auto full = torchtp::gather_from_tp_region(
                          once, model->group(), model->vocab_partition())
                          .narrow(-1, 0, model->vocab_size());
    const double scale = full.abs().max().item<double>();
    const double err = (stepped - full).abs().max().item<double>();
    EXPECT_LE(err, 1e-5 * scale) << family << " " << g.rank_label();
    // And the rounding is there: a float64 cache differs by far more.
    const auto exact = decode_logits(model, ids, 1);
    EXPECT_GT((exact - full).abs().max().item<double>(), 100 * err + 1e-12)
        << family << " " << g.rank_label();
  }
}

// float32 and int8 models with a bfloat16 cache against the float64 model
// holding the same weights with a float64 cache; greedy tokens at this
// world size are those of the same model and cache alone.
TEST(Bfloat16KeyValueCache, DecodeMatchesTheWidenedFloat64Model) {
  const auto g = world();
  const auto single = g.split(g.rank());
  for (const auto& [family, options] :
       {std::pair{"gpt2", gpt2_like()}, std::pair{"llama", llama_like()}}) {
    for (const bool int8 : {false, true}) {
      const std::string tag =
          std::string(family) + (int8 ? " int8" : " float32") + " weights";
      auto model = build(options, g, torch::kFloat, int8);
      auto alone = build(options, single, torch::kFloat, int8);
      auto ref = widened_copy(options, single, alone);
      torch::manual_seed(34);
      const auto prompts = torch::randint(40, {2, 5});
      std::vector<std::vector<int64_t>> p(2);
      for (int i = 0; i < 2; ++i) {
        p[i].assign(prompts[i].data_ptr<int64_t>(), prompts[i].data_ptr<int64_t>() + 5);
      }
      const auto o = torchtp::GenerateOptions().max_new_tokens(10).kv_cache_dtype(
          torch::kBFloat16);
      EXPECT_EQ(
          torchtp::generate(*model, p, o).tokens,
          torchtp::generate(*alone, p, o).tokens)
          << tag << " " << g.rank_label();
      const auto ref_gen = torchtp::generate(
          *ref, p, torchtp::GenerateOptions().max_new_tokens(10));
      auto ids = torch::cat({prompts, torch::zeros({2, 10}, torch::kLong)}, 1);
      for (int i = 0; i < 2; ++i) {
        ids[i].narrow(0, 5, 10).copy_(torch::tensor(ref_gen.tokens[i]));
      }
      const auto logits = decode_logits(model, ids, 5, torch::kBFloat16);
      const auto expected = decode_logits(ref, ids, 5);
      // Each key and value is within 2^-9 of its magnitude; a score q.k
      // then within 2^-9 of sum |q_i k_i| and a context within about twice
      // that of the values' magnitude, per layer; the errors of different
      // elements mostly cancel. 2^-8 of the logits' scale (measured here:
      // 3e-4 to 6e-4 of it; float32's own errors are ~1e-6).
      const double scale = expected.abs().max().item<double>();
      expect_logits_match(
          logits, expected, kBfloat16Eps * scale, tag + ", bfloat16 cache");
    }
  }
}

TEST(Bfloat16KeyValueCache, OtherDtypesAreRefused) {
  auto gpt = build(gpt2_like(), world(), torch::kFloat, false);
  for (auto dtype : {torch::kHalf, torch::kChar, torch::kLong}) {
    EXPECT_TRUE(torchtp::testing::raises_with(
        [&] { gpt->make_cache(dtype); },
        {"torchtp::GPT", "float32, bfloat16 or float64", "not"}));
    EXPECT_TRUE(torchtp::testing::raises_with(
        [&] { gpt->make_kv_blocks(4, 4, dtype); },
        {"torchtp::GPT", "float32, bfloat16 or float64", "not"}));
  }
}

// int8 weights, and a bfloat16 cache beside float32 weights, against
// float32 on 1,000 decode steps of a larger random model: the top-1 token
// agrees on at least 99% of them (teacher-forced on continuations the
// float32 model sampled from varied prompts).
TEST(QuantizedGPT, Int8AndABfloat16CacheAgreeWithFloat32OnTheTopTokenOver1000Steps) {
  const auto g = world();
  const auto o = torchtp::GPTOptions(512, 160)
                     .d_model(192)
                     .num_heads(12)
                     .num_layers(3)
                     .vocab_pad_multiple(12);
  auto f32 = build(o, g, torch::kFloat, false);
  auto i8 = build(o, g, torch::kFloat, true);
  torch::manual_seed(41);
  const int64_t batch = 8, prompt = 6, steps = 125; // 8 x 125 = 1000
  std::vector<std::vector<int64_t>> p(batch);
  for (int64_t i = 0; i < batch; ++i) {
    // Varied prompts: random ids, and a few repeated patterns.
    auto ids = i % 2 == 0 ? torch::randint(512, {prompt})
                          : torch::arange(i, i + prompt) * 37 % 512;
    p[i].assign(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + prompt);
  }
  const auto gen = torchtp::generate(
      *f32, p,
      torchtp::GenerateOptions()
          .max_new_tokens(steps)
          .sampling(torchtp::SamplingOptions().temperature(1.0).top_k(40))
          .seed(5));
  auto ids = torch::empty({batch, prompt + steps}, torch::kLong);
  for (int64_t i = 0; i < batch; ++i) {
    ids[i].narrow(0, 0, prompt).copy_(torch::tensor(p[i]));
    ids[i].narrow(0, prompt, steps).copy_(torch::tensor(gen.tokens[i]));
  }
  // The logits that predict each sampled token, decoded step by step.
  const auto a = decode_logits(f32, ids, prompt).narrow(1, 0, steps);
  for (const bool int8 : {true, false}) {
    const auto b = int8 ? decode_logits(i8, ids, prompt).narrow(1, 0, steps)
                        : decode_logits(f32, ids, prompt, torch::kBFloat16)
                              .narrow(1, 0, steps);
    const char* what = int8 ? "int8 weights" : "bfloat16 cache";
    const double agree =
        (a.argmax(-1) == b.argmax(-1)).to(torch::kDouble).mean().item<double>();
    const double mean_diff = (a - b).abs().mean().item<double>();
    if (g.rank() == 0) {
      std::printf(
          "[ %s vs float32 ] top-1 agreement %.4f over %lld steps; mean "
          "|logit diff| %.4g (mean |logit| %.4g)\n",
          what, agree, static_cast<long long>(batch * steps), mean_diff,
          a.abs().mean().item<double>());
    }
    EXPECT_GE(agree, 0.99) << what << " " << g.rank_label();
  }
}

// int8 weights and their scales in sharded checkpoints, resharded between
// this world size and one rank; floating-point and int8 never mix.
TEST(QuantizedCheckpoint, SavesAndReshardsInt8Weights) {
  const auto g = world();
  const auto single = g.split(g.rank());
  const auto o = llama_like();
  auto model = build(o, g, torch::kFloat, true);
  auto alone = build(o, single, torch::kFloat, true);
  auto other_weights = [&](const torchtp::Group& group) {
    torch::manual_seed(77);
    torchtp::GPT gpt(torchtp::GPTOptions(o).group(group).dtype(torch::kFloat));
    gpt->eval();
    torchtp::quantize_int8(*gpt);
    return gpt;
  };
  auto same_stored = [](torchtp::GPT& a, torchtp::GPT& b) {
    auto pb = b->named_parameters();
    for (const auto& p : a->named_parameters()) {
      if (!torch::equal(p.value(), pb[p.key()])) {
        return ::testing::AssertionFailure() << p.key() << " differs";
      }
    }
    auto bb = b->named_buffers();
    for (const auto& p : a->named_buffers()) {
      if (!torch::equal(p.value(), bb[p.key()])) {
        return ::testing::AssertionFailure() << p.key() << " differs";
      }
    }
    return ::testing::AssertionSuccess();
  };
  const auto dir = torchtp::testing::shared_tmpdir("int8-ckpt");
  // Saved at this world size, loaded by one rank alone.
  torchtp::save_checkpoint(dir + "/tp", *model);
  auto one = other_weights(single);
  torchtp::load_checkpoint(dir + "/tp", *one);
  EXPECT_TRUE(same_stored(one, alone)) << g.rank_label();
  // Saved by one rank, loaded at this world size: the same logits as the
  // model quantized here.
  if (g.rank() == 0) {
    torchtp::save_checkpoint(dir + "/one", *alone);
  }
  g.barrier();
  auto split = other_weights(g);
  torchtp::load_checkpoint(dir + "/one", *split);
  const auto ids = torch::randint(40, {2, 6});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(split->full_logits(ids), model->full_logits(ids)))
      << g.rank_label();
  // int8 into floating point, and back, are refused.
  torchtp::GPT dense(torchtp::GPTOptions(o).group(g).dtype(torch::kFloat));
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] { torchtp::load_checkpoint(dir + "/tp", *dense); },
      {"is Char", "the model's is Float", "quantize_int8"}));
  torchtp::save_checkpoint(dir + "/dense", *dense);
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] { torchtp::load_checkpoint(dir + "/dense", *split); },
      {"is Float", "the model's is Char"}));
  g.barrier();
  if (g.rank() == 0) {
    std::filesystem::remove_all(dir);
  }
}

TEST(QuantizedGPT, QuantizingTwiceIsRefused) {
  auto gpt = build(gpt2_like(), world(), torch::kFloat, true);
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] { torchtp::quantize_int8(*gpt); },
      {"quantize_int8", "floating-point weight", "Char"}));
}

TEST(QuantizedGPT, CloneIsADeepCopyThatServesTheSame) {
  // Tied (GPT-2-like) and untied (Llama-like) output layers.
  for (const auto& o : {gpt2_like(), llama_like()}) {
    auto gpt = build(o, world(), torch::kFloat, true);
    auto copy = std::dynamic_pointer_cast<torchtp::GPTImpl>(gpt->clone());
    ASSERT_TRUE(copy);
    auto theirs = copy->named_buffers();
    for (const auto& b : gpt->named_buffers()) {
      ASSERT_NE(theirs.find(b.key()), nullptr) << b.key();
      EXPECT_TRUE(theirs[b.key()].equal(b.value())) << b.key();
      EXPECT_NE(theirs[b.key()].data_ptr(), b.value().data_ptr()) << b.key();
    }
    auto params = copy->named_parameters();
    for (const auto& p : gpt->named_parameters()) {
      EXPECT_EQ(params[p.key()].scalar_type(), p.value().scalar_type())
          << p.key();
      EXPECT_TRUE(params[p.key()].equal(p.value())) << p.key();
    }
    torch::manual_seed(5);
    auto ids = torch::randint(o.vocab_size(), {2, 6}, torch::kLong);
    torchtp::GPT copied(copy);
    EXPECT_TRUE(decode_logits(copied, ids, 3).equal(decode_logits(gpt, ids, 3)));
  }
}

} // namespace
