// The Llama family's blocks (RMSNorm, rotary positions, grouped-query
// attention, the gated SiLU MLP; Qwen2's biases) in a GPT split over the
// ranks, against an unsharded Llama written here from the architecture with
// plain tensor ops, in float64: logits, loss and every gradient. Also the
// rotary embedding against its closed form, llama3 scaling against its
// formula, cached decoding against recomputation, and grouped-query
// checkpoints resharded between tensor-parallel sizes.

#include "reference.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <string>

using torchtp::testing::all_close;
using torchtp::testing::leaf;
using torchtp::testing::raises_with;
using torchtp::testing::world;

namespace {

constexpr int64_t kVocab = 37, kSeq = 7;

// A Llama-layout model's shape and parts.
struct Shape {
  std::string name;
  int64_t heads, kv_heads, head_dim, d = 24, ffn = 20, layers = 2;
  bool qkv_bias = false, tied = false, sequence_parallel = false;
  bool recompute = false;
  torchtp::RotaryOptions rotary = torchtp::RotaryOptions().theta(500.0);
};

std::ostream& operator<<(std::ostream& os, const Shape& s) {
  return os << s.name;
}

torchtp::GPTOptions options_of(const Shape& s, const torchtp::Group& g) {
  return torchtp::GPTOptions(kVocab, 16)
      .d_model(s.d)
      .num_heads(s.heads)
      .num_kv_heads(s.kv_heads)
      .head_dim(s.head_dim)
      .num_layers(s.layers)
      .ffn_hidden(s.ffn)
      .norm(torchtp::NormType::rms_norm)
      .layer_norm_eps(1e-6)
      .rotary(s.rotary)
      .gated_mlp(true)
      .activation(torchtp::Activation::silu)
      .bias(false)
      .qkv_bias(s.qkv_bias)
      .tie_embeddings(s.tied)
      .vocab_pad_multiple(1)
      .uneven(true)
      .sequence_parallel(s.sequence_parallel)
      .recompute(s.recompute)
      .group(g)
      .dtype(torch::kDouble);
}

// The full weights, by the GPT's parameter names, drawn here (the same on
// every rank), with leaves for the reference's gradients.
using Weights = std::map<std::string, torch::Tensor>;

Weights draw_weights(const Shape& s, uint64_t seed) {
  torch::manual_seed(seed);
  auto r = [](std::vector<int64_t> sizes, double scale) {
    return leaf(torch::randn(sizes, torch::kDouble) * scale);
  };
  const int64_t q = s.heads * s.head_dim, kv = s.kv_heads * s.head_dim;
  Weights w;
  w["token_embedding.weight"] = r({kVocab, s.d}, 1.0);
  for (int64_t i = 0; i < s.layers; ++i) {
    const auto p = "layers." + std::to_string(i) + ".";
    w[p + "ln1.weight"] = leaf(1 + torch::randn({s.d}, torch::kDouble) / 10);
    w[p + "attention.qkv.weight"] = r({q + 2 * kv, s.d}, 1 / std::sqrt(s.d));
    if (s.qkv_bias) {
      w[p + "attention.qkv.bias"] = r({q + 2 * kv}, 0.1);
    }
    w[p + "attention.proj.weight"] = r({s.d, q}, 1 / std::sqrt(q));
    w[p + "ln2.weight"] = leaf(1 + torch::randn({s.d}, torch::kDouble) / 10);
    w[p + "mlp.fc1.weight"] = r({2 * s.ffn, s.d}, 1 / std::sqrt(s.d));
    w[p + "mlp.fc2.weight"] = r({s.d, s.ffn}, 1 / std::sqrt(s.ffn));
  }
  w["final_norm.weight"] = leaf(1 + torch::randn({s.d}, torch::kDouble) / 10);
  if (!s.tied) {
    w["lm_head.weight"] = r({kVocab, s.d}, 1 / std::sqrt(s.d));
  }
  return w;
}

// RMSNorm as the Llama paper writes it.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w) {
  return x / torch::sqrt(x.pow(2).mean(-1, true) + 1e-6) * w;
}

// Rotates pairs (i, i + half) of every head by position * inv_freq[i].
torch::Tensor rotate(
    const torch::Tensor& x, // [b, heads, s, hd]
    const torch::Tensor& inv_freq) {
  const int64_t s = x.size(2), half = x.size(3) / 2;
  auto angle = torch::arange(s, torch::kDouble).unsqueeze(1) * inv_freq; // [s, half]
  auto c = angle.cos(), sn = angle.sin();
  auto x1 = x.narrow(3, 0, half), x2 = x.narrow(3, half, half);
  return torch::cat({x1 * c - x2 * sn, x2 * c + x1 * sn}, 3);
}

// The inverse frequencies of Llama's RoPE, without scaling.
torch::Tensor plain_inv_freq(int64_t head_dim, double theta) {
  std::vector<double> f;
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    f.push_back(1.0 / std::pow(theta, 2.0 * i / head_dim));
  }
  return torch::tensor(f, torch::kDouble);
}

// The unsharded Llama: logits [b, s, vocab] of ids [b, s].
torch::Tensor llama_ref(const Shape& s, const Weights& w, const torch::Tensor& ids) {
  const int64_t b = ids.size(0), n = ids.size(1), hd = s.head_dim;
  const int64_t q_dim = s.heads * hd, kv_dim = s.kv_heads * hd;
  const auto inv_freq = plain_inv_freq(hd, s.rotary.theta());
  auto h = w.at("token_embedding.weight").index_select(0, ids.reshape(-1))
               .view({b, n, s.d});
  const auto future = torch::ones({n, n}, torch::kBool).triu(1);
  for (int64_t i = 0; i < s.layers; ++i) {
    const auto p = "layers." + std::to_string(i) + ".";
    auto x = rms_norm(h, w.at(p + "ln1.weight"));
    auto wqkv = w.at(p + "attention.qkv.weight");
    auto qkv = torch::matmul(x, wqkv.t());
    if (s.qkv_bias) {
      qkv = qkv + w.at(p + "attention.qkv.bias");
    }
    auto heads = [&](int64_t from, int64_t count) {
      return qkv.narrow(2, from, count * hd)
          .reshape({b, n, count, hd})
          .transpose(1, 2);
    };
    auto q = rotate(heads(0, s.heads), inv_freq);
    auto k = rotate(heads(q_dim, s.kv_heads), inv_freq);
    auto v = heads(q_dim + kv_dim, s.kv_heads);
    // Query head j reads key/value head j / (heads / kv_heads).
    k = k.repeat_interleave(s.heads / s.kv_heads, 1);
    v = v.repeat_interleave(s.heads / s.kv_heads, 1);
    auto scores = torch::matmul(q, k.transpose(2, 3)) / std::sqrt(double(hd));
    scores = scores.masked_fill(future, -INFINITY);
    auto att = torch::matmul(torch::softmax(scores, -1), v)
                   .transpose(1, 2)
                   .reshape({b, n, q_dim});
    h = h + torch::matmul(att, w.at(p + "attention.proj.weight").t());
    x = rms_norm(h, w.at(p + "ln2.weight"));
    auto gate_up = torch::matmul(x, w.at(p + "mlp.fc1.weight").t());
    auto gate = gate_up.narrow(2, 0, s.ffn), up = gate_up.narrow(2, s.ffn, s.ffn);
    h = h + torch::matmul(torch::silu(gate) * up, w.at(p + "mlp.fc2.weight").t());
  }
  auto out = rms_norm(h, w.at("final_norm.weight"));
  return torch::matmul(
      out, w.at(s.tied ? "token_embedding.weight" : "lm_head.weight").t());
}

// A GPT of `s` over `g` holding this rank's shards of `w`.
torchtp::GPT make(const Shape& s, const torchtp::Group& g, const Weights& w) {
  torchtp::GPT model(options_of(s, g));
  const auto specs = torchtp::shard_specs(*model);
  for (auto& p : model->named_parameters()) {
    TORCH_CHECK(w.count(p.key()), "no reference weight for ", p.key());
    torchtp::copy_shard_of(
        p.value(), w.at(p.key()).detach(), specs.at(p.key()), g, "test",
        p.key());
  }
  return model;
}

std::vector<Shape> shapes() {
  std::vector<Shape> out;
  // Multi-head: as many key/value heads as query heads. Every shape has
  // at least 5 query heads, one for each rank at the largest size.
  out.push_back({"multi_head", 5, 5, 6});
  // Grouped-query: 8 query heads read 2 key/value heads, so 3 or more
  // ranks hold a key/value head twice; head_dim 4 is not d_model / heads.
  out.push_back({"grouped_query", 8, 2, 4});
  // Multi-query: one key/value head on every rank.
  out.push_back({"multi_query", 8, 1, 4});
  // Qwen2: biases on Q, K, V only, tied output layer, 7 query heads.
  Shape qwen{"qwen2_biases_tied", 7, 1, 4};
  qwen.qkv_bias = true;
  qwen.tied = true;
  out.push_back(qwen);
  // Sequence parallelism with grouped-query heads and RMSNorm on shards.
  Shape sp{"grouped_query_sequence_parallel", 8, 2, 4};
  sp.sequence_parallel = true;
  out.push_back(sp);
  // Recomputation runs the shared heads' forward again in backward.
  Shape again{"multi_query_recompute", 6, 1, 4};
  again.recompute = true;
  out.push_back(again);
  return out;
}

class LlamaBlocks : public ::testing::TestWithParam<Shape> {};

} // namespace

TEST_P(LlamaBlocks, LogitsLossAndEveryGradientMatchTheUnshardedLlama) {
  const auto s = GetParam();
  auto g = world();
  const auto w = draw_weights(s, 3);
  torch::manual_seed(4);
  auto ids = torch::randint(kVocab, {2, kSeq}, torch::kLong);
  auto targets = torch::randint(kVocab, {2, kSeq}, torch::kLong);
  targets[0][2] = -100; // ignored

  auto ref_logits = llama_ref(s, w, ids);
  auto ref_loss = torch::nn::functional::cross_entropy(
      ref_logits.reshape({-1, kVocab}), targets.reshape(-1));
  ref_loss.backward();

  auto model = make(s, g, w);
  EXPECT_TRUE(all_close(model->full_logits(ids), ref_logits.detach()));
  auto loss = model->loss(ids, targets);
  EXPECT_TRUE(all_close(loss, ref_loss.detach()));
  loss.backward();
  const auto specs = torchtp::shard_specs(*model);
  for (const auto& p : model->named_parameters()) {
    SCOPED_TRACE(p.key());
    EXPECT_TRUE(all_close(
        p.value().grad(),
        torchtp::shard_of(w.at(p.key()).grad(), specs.at(p.key()), g, p.key())));
  }
  // The full gradient's norm, a key/value head held by several ranks
  // counted once.
  double squares = 0;
  for (const auto& item : w) {
    squares += item.second.grad().square().sum().item<double>();
  }
  const double norm = std::sqrt(squares);
  EXPECT_NEAR(torchtp::clip_grad_norm(*model, 1e9), norm, 1e-9 * norm);
}

TEST_P(LlamaBlocks, CachedDecodingEqualsRecomputationWithLeftPadding) {
  const auto s = GetParam();
  auto g = world();
  const auto w = draw_weights(s, 5);
  auto model = make(s, g, w);
  // Recomputed without sequence parallelism, which needs a sequence of at
  // least one position per rank.
  auto plain_shape = s;
  plain_shape.sequence_parallel = false;
  auto plain = make(plain_shape, g, w);
  torch::NoGradGuard no_grad;
  model->eval();
  torch::manual_seed(6);
  // Two prompts, 3 and 5 tokens, left-padded, then 3 tokens each.
  auto a = torch::randint(kVocab, {1, 6}, torch::kLong);
  auto b = torch::randint(kVocab, {1, 8}, torch::kLong);
  auto ids = torch::zeros({2, 5}, torch::kLong);
  auto mask = torch::zeros({2, 5}, torch::kBool);
  ids[0].narrow(0, 2, 3).copy_(a[0].narrow(0, 0, 3));
  mask[0].narrow(0, 2, 3).fill_(true);
  ids[1].copy_(b[0].narrow(0, 0, 5));
  mask[1].fill_(true);
  auto cache = model->make_cache();
  auto logits = model->forward_cached(ids, cache, mask);
  std::vector<torch::Tensor> last = {logits[0][-1], logits[1][-1]};
  // Each step's logits equal the full forward of that sequence alone.
  for (int64_t step = 0; step < 3; ++step) {
    const int64_t la = 3 + step, lb = 5 + step;
    auto full_a = plain->forward(a.narrow(1, 0, la))[0][la - 1];
    auto full_b = plain->forward(b.narrow(1, 0, lb))[0][lb - 1];
    EXPECT_TRUE(all_close(last[0], full_a)) << "step " << step;
    EXPECT_TRUE(all_close(last[1], full_b)) << "step " << step;
    auto next = torch::stack({a[0][la], b[0][lb]}).unsqueeze(1);
    logits = model->forward_cached(next, cache);
    last = {logits[0][0], logits[1][0]};
  }
  // Each rank caches only its key/value heads.
  auto* attention = model->layers[0]
                        ->as<torchtp::TransformerLayerImpl>()
                        ->attention.get();
  EXPECT_EQ(cache.layers[0].k.size(1), attention->local_kv_heads());
  EXPECT_LE(attention->local_kv_heads(), attention->local_heads());
}

INSTANTIATE_TEST_SUITE_P(
    Shapes,
    LlamaBlocks,
    ::testing::ValuesIn(shapes()),
    [](const auto& info) { return info.param.name; });

TEST(LlamaBlocks, GroupedQueryCheckpointsReshardBetweenEverySize) {
  // 8 query heads, 2 key/value heads: at 4 ranks each is held twice.
  const Shape s{"grouped_query", 8, 2, 4};
  const auto w = draw_weights(s, 8);
  auto ids = torch::randint(kVocab, {2, kSeq}, torch::kLong);
  const auto dir = torchtp::testing::shared_tmpdir("llama_ckpt");
  std::vector<int> sizes;
  for (int tp = 1; tp <= world().size(); ++tp) {
    if (world().size() % tp == 0) {
      sizes.push_back(tp);
    }
  }
  for (int save_tp : sizes) {
    auto pg = torchtp::make_parallel_groups(world(), save_tp);
    auto saved = make(s, pg.tensor, w);
    const auto path = dir + "/tp" + std::to_string(save_tp);
    if (pg.data.rank() == 0) {
      torchtp::save_checkpoint(path, *saved);
    }
    world().barrier();
    for (int load_tp : sizes) {
      SCOPED_TRACE(
          "saved at TP=" + std::to_string(save_tp) +
          ", loaded at TP=" + std::to_string(load_tp));
      auto lpg = torchtp::make_parallel_groups(world(), load_tp);
      torch::manual_seed(99); // other weights until loaded
      torchtp::GPT loaded(options_of(s, lpg.tensor));
      torchtp::load_checkpoint(path, *loaded);
      const auto specs = torchtp::shard_specs(*loaded);
      for (const auto& p : loaded->named_parameters()) {
        EXPECT_TRUE(torch::equal(
            p.value(),
            torchtp::shard_of(
                w.at(p.key()).detach(), specs.at(p.key()), lpg.tensor,
                p.key())))
            << p.key();
      }
    }
  }
  world().barrier();
  if (world().rank() == 0) {
    std::filesystem::remove_all(dir);
  }
}

TEST(LlamaBlocks, HeadsThatCannotBeSplitAreRefusedWithTheNumbers) {
  auto g = world();
  EXPECT_TRUE(raises_with(
      [&] {
        torchtp::ParallelSelfAttention(
            torchtp::ParallelSelfAttentionOptions(24, 6).num_kv_heads(4).group(
                g));
      },
      {"num_heads (6)", "num_kv_heads (4)", "[rank"}));
}

TEST(LlamaBlocks, UnevenHeadsNeedUnevenAndSayHowMany) {
  auto g = world();
  if (g.size() < 3) {
    return; // 8 query heads divide by 1 and 2 ranks
  }
  auto options = torchtp::ParallelSelfAttentionOptions(24, 8)
                     .num_kv_heads(2)
                     .head_dim(4)
                     .group(g);
  if (8 % g.size() != 0) {
    EXPECT_TRUE(raises_with(
        [&] { torchtp::ParallelSelfAttention attention(options); },
        {"num_heads", "(8)", "(" + std::to_string(g.size()) + ")", "[rank"}));
  }
}

TEST(Rotary, EqualsTheRotationOfEachPairByItsAngle) {
  torch::manual_seed(1);
  const int64_t hd = 8;
  auto x = torch::randn({2, 3, 5, hd}, torch::kDouble);
  auto positions = torch::tensor({{0, 1, 2, 3, 4}, {7, 8, 9, 10, 11}});
  const double theta = 10000;
  auto inv = torchtp::rotary_inverse_frequencies(
      hd, torchtp::RotaryOptions().theta(theta));
  auto y = torchtp::apply_rotary(x, positions, inv);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t t = 0; t < 5; ++t) {
      const double p = positions[b][t].item<double>();
      for (int64_t i = 0; i < hd / 2; ++i) {
        const double angle = p * std::pow(theta, -2.0 * i / hd);
        for (int64_t h = 0; h < 3; ++h) {
          const double x1 = x[b][h][t][i].item<double>();
          const double x2 = x[b][h][t][i + hd / 2].item<double>();
          EXPECT_NEAR(
              y[b][h][t][i].item<double>(),
              x1 * std::cos(angle) - x2 * std::sin(angle), 1e-12);
          EXPECT_NEAR(
              y[b][h][t][i + hd / 2].item<double>(),
              x2 * std::cos(angle) + x1 * std::sin(angle), 1e-12);
        }
      }
    }
  }
}

// At inference apply_rotary takes one pass (detail::rotary_rows) instead
// of LibTorch's operations; with gradients it takes LibTorch's. The pass
// rounds where those operations round: cos and sin to x's dtype, each
// product, then the sum. Queries laid out as a projection's view (the
// heads inside the positions) and contiguous, positions per sequence and
// shared, out to 30000 (large angles), float32 and bfloat16.
TEST(Rotary, InferenceRoundsAsTheTrainingOperationsAndNearFloat64) {
  torch::manual_seed(4);
  const int64_t b = 3, s = 5, heads = 4, hd = 64;
  const auto inv = torchtp::rotary_inverse_frequencies(
      hd, torchtp::RotaryOptions().theta(1e6));
  const auto shared = torch::tensor({0, 1, 17, 4097, 30000});
  const auto per_sequence = torch::randint(0, 30000, {b, s});
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    const auto projected = (torch::randn({b, s, (heads + 2) * hd}) * 3).to(dtype);
    const auto view = projected.narrow(2, hd, heads * hd)
                          .view({b, s, heads, hd})
                          .permute({0, 2, 1, 3});
    for (const auto& x : {view, view.contiguous()}) {
      for (const auto& positions : {shared, per_sequence}) {
        SCOPED_TRACE(
            c10::str(dtype, " x strides ", x.strides(), " positions ",
                     positions.sizes()));
        const auto y = [&] {
          torch::NoGradGuard no_grad;
          return torchtp::apply_rotary(x, positions, inv);
        }();
        const auto trained = torchtp::apply_rotary(
            x.detach().requires_grad_(true), positions, inv);
        ASSERT_TRUE(trained.requires_grad());
        ASSERT_EQ(y.scalar_type(), dtype);
        ASSERT_EQ(y.sizes(), x.sizes());
        // Against float64: cos and sin rounded (half a unit each), each
        // product and the sum rounded (half a unit each); units of x's
        // dtype, relative to |x1| + |x2|.
        const auto wide = x.to(torch::kDouble);
        auto angles = positions.to(torch::kDouble).unsqueeze(-1) * inv;
        angles = torch::cat({angles, angles}, -1);
        if (angles.dim() == 3) {
          angles = angles.unsqueeze(1);
        }
        const auto rotated = torch::cat(
            {-wide.narrow(3, hd / 2, hd / 2), wide.narrow(3, 0, hd / 2)}, 3);
        const auto exact = wide * angles.cos() + rotated * angles.sin();
        const double unit =
            std::ldexp(1.0, dtype == torch::kFloat ? -24 : -8);
        const auto pair = wide.abs() + rotated.abs();
        const auto err = (y.to(torch::kDouble) - exact).abs();
        EXPECT_TRUE((err <= 4 * unit * pair + 1e-30).all().item<bool>())
            << "max diff from float64 " << err.max().item<double>();
        // Against LibTorch's operations: the same roundings, so equal but
        // where float64 cos and sin (LibTorch's vectorised ones, glibc's
        // here) differ at a rounding boundary: one unit of a product.
        const auto diff = (y.to(torch::kDouble) -
                           trained.detach().to(torch::kDouble))
                              .abs();
        EXPECT_TRUE((diff <= 2 * unit * pair + 1e-30).all().item<bool>())
            << "max diff from LibTorch " << diff.max().item<double>();
        EXPECT_GT(
            (diff == 0).to(torch::kDouble).mean().item<double>(), 0.999);
        // Sequence 2 alone gives the bits it gives among three.
        if (positions.dim() == 2) {
          torch::NoGradGuard no_grad;
          EXPECT_TRUE(torch::equal(
              torchtp::apply_rotary(
                  x.narrow(0, 2, 1), positions.narrow(0, 2, 1), inv)[0],
              y[2]));
        }
      }
    }
  }
}

TEST(Rotary, Llama3ScalingFollowsItsFormula) {
  // Llama 3.1's parameters: theta 500000, factor 8, low 1, high 4, 8192.
  const int64_t hd = 128;
  const double factor = 8, low = 1, high = 4, context = 8192;
  auto inv = torchtp::rotary_inverse_frequencies(
      hd, torchtp::RotaryOptions()
              .theta(500000)
              .scaling(torchtp::RopeScalingType::llama3)
              .factor(factor)
              .low_freq_factor(low)
              .high_freq_factor(high)
              .original_max_position_embeddings(8192));
  ASSERT_EQ(inv.size(0), hd / 2);
  int kept = 0, divided = 0, blended = 0;
  for (int64_t i = 0; i < hd / 2; ++i) {
    const double f = std::pow(500000.0, -2.0 * i / hd);
    const double wavelen = 2 * M_PI / f;
    double expected;
    if (wavelen < context / high) {
      expected = f, ++kept;
    } else if (wavelen > context / low) {
      expected = f / factor, ++divided;
    } else {
      const double smooth = (context / wavelen - low) / (high - low);
      expected = (1 - smooth) * f / factor + smooth * f, ++blended;
    }
    EXPECT_NEAR(inv[i].item<double>(), expected, 1e-15 * expected) << i;
  }
  // The three bands are all exercised.
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
  auto linear = torchtp::rotary_inverse_frequencies(
      hd, torchtp::RotaryOptions().theta(10000).scaling(
              torchtp::RopeScalingType::linear).factor(4));
  EXPECT_TRUE(torch::allclose(linear, plain_inv_freq(hd, 10000) / 4));
}

TEST(RMSNorm, NormalisesReducedPrecisionInFloat32) {
  torch::manual_seed(2);
  torchtp::Norm norm(torchtp::NormOptions(16)
                         .type(torchtp::NormType::rms_norm)
                         .eps(1e-6)
                         .dtype(torch::kBFloat16));
  EXPECT_FALSE(norm->bias.defined());
  auto x = torch::randn({3, 16}).to(torch::kBFloat16) * 50;
  // Hugging Face's LlamaRMSNorm, spelled out.
  auto wide = x.to(torch::kFloat);
  auto expected =
      norm->weight *
      (wide * torch::rsqrt(wide.pow(2).mean(-1, true) + 1e-6)).to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(norm(x), expected));
}

// At inference (no gradients) the norm is one pass (detail::rms_norm_rows),
// against float64 from the same values. float32: the mean of squares of n
// terms summed in 16 lanes is within about (n / 16 + 4) 2^-24 of exact,
// the square root, division and two products a few units more. bfloat16:
// the two roundings (the normalised value, then its product with the
// weight) each within one unit in the last place, at most 2^-7.
TEST(RMSNorm, InferenceMatchesFloat64AndEachRowStandsAlone) {
  torch::manual_seed(3);
  const int64_t n = 900; // not a multiple of the 16 lanes
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    torchtp::Norm norm(torchtp::NormOptions(n)
                           .type(torchtp::NormType::rms_norm)
                           .eps(1e-6)
                           .dtype(dtype));
    torch::NoGradGuard no_grad;
    norm->weight.copy_(torch::randn({n}));
    const auto x = (torch::randn({5, 1, n}) * 7).to(dtype);
    const auto y = norm(x);
    ASSERT_EQ(y.scalar_type(), dtype);
    ASSERT_EQ(y.sizes(), x.sizes());
    const auto wide = x.to(torch::kDouble);
    auto normed = wide * torch::rsqrt(wide.pow(2).mean(-1, true) + 1e-6);
    torch::Tensor exact, bound;
    const auto weight = norm->weight.to(torch::kDouble);
    if (dtype == torch::kFloat) {
      exact = weight * normed;
      bound = (n / 16.0 + 12) * std::ldexp(1.0, -24) * exact.abs();
    } else {
      exact = weight * normed.to(torch::kBFloat16).to(torch::kDouble);
      bound = 2 * std::ldexp(1.0, -7) * exact.abs();
    }
    const auto err = (y.to(torch::kDouble) - exact).abs();
    EXPECT_TRUE((err <= bound + 1e-30).all().item<bool>())
        << dtype << ": max diff " << err.max().item<double>();
    // A row alone gives the bits it gives among the five.
    EXPECT_TRUE(torch::equal(norm(x.narrow(0, 3, 1))[0], y[3])) << dtype;
  }
}
