// A bounded fuzzer: random shapes, options, dtypes, layers and blocks and
// tensor x data parallel layouts, each forward and backward compared with
// the unsharded LibTorch computation (reference.h), on every rank.
//
//   torchtp-run --nproc-per-node N test_fuzz
//   TORCHTP_FUZZ_SEED   seed of the whole run (default: drawn by rank 0 and
//                       shared); printed first
//   TORCHTP_FUZZ_CASES  number of cases (default 40)
//   TORCHTP_FUZZ_FIRST  index of the first case (default 0)
//
// Case i depends only on (seed, i), and every rank derives it from the same
// pair, so every rank draws the same configuration and a failing case
// replays alone: each failure prints the command that replays it.

#include "reference.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using torchtp::testing::all_close;
using torchtp::testing::attention_ref;
using torchtp::testing::leaf;
using torchtp::testing::own;
using torchtp::testing::Tolerance;
using torchtp::testing::tolerance_for;
using torchtp::testing::world;

namespace F = torch::nn::functional;

namespace {

uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    return fallback;
  }
  return std::strtoull(v, nullptr, 10);
}

// splitmix64: a case's seed from the run's seed and its index, so any case
// can be replayed without running the ones before it.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The configuration draws; the same binary gives the same numbers on every
// rank.
struct Draw {
  explicit Draw(uint64_t seed) : gen(seed) {}
  int64_t between(int64_t lo, int64_t hi) { // inclusive
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen);
  }
  bool coin() {
    return between(0, 1) == 1;
  }
  std::mt19937_64 gen;
};

// The tensor and data groups of one layout, made once for the whole run
// (splitting is collective and makes new communicators).
struct Layout {
  int tp;
  int dp;
  torchtp::ParallelGroups groups;
};

struct Case {
  const Layout* layout;
  torch::Dtype dtype;
  Draw* draw;
  std::ostringstream* desc;
  bool print;

  // Called by each kind once it has drawn its configuration, before any
  // communication, so a case that hangs or crashes has been named.
  void announce() const {
    if (print) {
      std::cout << desc->str() << std::endl;
    }
  }
  const torchtp::Group& tensor() const {
    return layout->groups.tensor;
  }
  const torchtp::Group& data() const {
    return layout->groups.data;
  }
  int tp() const {
    return layout->tp;
  }
  int dp() const {
    return layout->dp;
  }
  Tolerance tol() const {
    // The reference runs in float64 on the float32-rounded values: float32
    // results differ by its rounding (sums of up to a few hundred terms,
    // amplified by a LayerNorm's 1 / std).
    return dtype == torch::kDouble ? tolerance_for(torch::kDouble)
                                   : Tolerance{2e-4, 5e-4};
  }
  // Full tensors are drawn in float64 and rounded to the case's dtype, so
  // the float64 reference sees exactly the values the layer sees.
  torch::Tensor full(torch::IntArrayRef sizes, double scale = 1.0) const {
    return (torch::randn(sizes, torch::kDouble) * scale)
        .to(dtype)
        .to(torch::kDouble);
  }
  torch::Tensor as_dtype(const torch::Tensor& t) const {
    return t.to(dtype);
  }
  // This replica's rows of a full batch (dim 0).
  torch::Tensor replica_rows(const torch::Tensor& full) const {
    const int64_t rows = full.size(0) / dp();
    return full.narrow(0, data().rank() * rows, rows);
  }
};

// Rank `rank`'s part of each of the `segments` blocks of `full` along `dim`
// (what ColumnParallelLinear with segments(k) holds), in block order.
torch::Tensor pick_segments(
    const torch::Tensor& full,
    int64_t dim,
    int64_t segments,
    int rank,
    int ws) {
  auto t = full.movedim(dim, 0);
  auto sizes = t.sizes().vec();
  const int64_t block = sizes[0] / segments;
  std::vector<int64_t> split = {segments, ws, block / ws};
  split.insert(split.end(), sizes.begin() + 1, sizes.end());
  auto out = sizes;
  out[0] = sizes[0] / ws;
  return t.reshape(split).select(1, rank).reshape(out).movedim(0, dim);
}

// A batch of leading dims `[dp * k, ...]` then `last`.
std::vector<int64_t> leading_shape(Case& c, int64_t last) {
  std::vector<int64_t> sizes = {c.dp() * c.draw->between(1, 3)};
  const int64_t extra = c.draw->between(0, 2);
  for (int64_t i = 0; i < extra; ++i) {
    sizes.push_back(c.draw->between(1, 4));
  }
  sizes.push_back(last);
  return sizes;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < s.size(); ++i) {
    out << (i ? "," : "") << s[i];
  }
  out << "]";
  return out.str();
}

// The replica's output and input gradient against the reference's rows.
// The replica ran backward with the upstream gradient times dp, so that
// after average_gradients its parameter gradients are the full batch's;
// its input gradient is then dp times the reference's rows.
void expect_output_and_input_grad(
    const Case& c,
    const torch::Tensor& y,
    const torch::Tensor& expected_rows,
    const torch::Tensor& x_grad,
    const torch::Tensor& expected_x_grad_rows) {
  EXPECT_TRUE(all_close(y, expected_rows, c.tol())) << "output";
  EXPECT_TRUE(all_close(x_grad, expected_x_grad_rows * c.dp(), c.tol()))
      << "input gradient";
}

// A linear layer's full problem, drawn in one order (weight, bias, input,
// upstream gradient), and its unsharded output and gradients, float64.
struct LinearReference {
  torch::Tensor w, b, x0, upstream, xr, expected;

  LinearReference(
      const Case& c,
      std::vector<int64_t> shape,
      int64_t in,
      int64_t out,
      bool bias,
      bool skip) {
    w = leaf(c.full({out, in}, 1 / std::sqrt(double(in))));
    b = bias ? leaf(c.full({out}, 0.1)) : torch::Tensor();
    x0 = c.full(shape);
    shape.back() = out;
    upstream = c.full(shape);
    xr = leaf(x0);
    expected = F::linear(xr, w, skip ? torch::Tensor() : b);
    expected.backward(upstream);
  }
};

void fuzz_column(Case& c) {
  const int64_t segments = c.draw->between(1, 3);
  const int64_t in = c.draw->between(1, 12);
  const int64_t out = segments * c.tp() * c.draw->between(1, 4);
  const bool bias = c.draw->coin(), gather = c.draw->coin();
  const bool skip = bias && c.draw->between(0, 3) == 0;
  auto shape = leading_shape(c, in);
  *c.desc << "ColumnParallelLinear(" << in << ", " << out << ") bias=" << bias
          << " gather_output=" << gather << " skip_bias_add=" << skip
          << " segments=" << segments << " input " << shape_str(shape);
  c.announce();

  torchtp::ColumnParallelLinear layer(
      torchtp::ColumnParallelLinearOptions(in, out)
          .bias(bias)
          .gather_output(gather)
          .skip_bias_add(skip)
          .segments(segments)
          .group(c.tensor())
          .dtype(c.dtype));
  LinearReference ref(c, shape, in, out, bias, skip);
  const auto &w = ref.w, &b = ref.b, &x0 = ref.x0, &upstream = ref.upstream;
  const auto &xr = ref.xr, &expected = ref.expected;
  layer->load_full_weights(c.as_dtype(w), bias ? c.as_dtype(b) : b);

  auto x = leaf(c.as_dtype(c.replica_rows(x0)));
  auto y = layer(x);
  auto up_rows = c.replica_rows(upstream);
  auto exp_rows = c.replica_rows(expected.detach());
  if (!gather) {
    up_rows = pick_segments(up_rows, -1, segments, c.tensor().rank(), c.tp());
    exp_rows = pick_segments(exp_rows, -1, segments, c.tensor().rank(), c.tp());
  }
  y.backward(c.as_dtype(up_rows * c.dp()));
  torchtp::average_gradients(*layer, c.data());

  expect_output_and_input_grad(
      c, y, exp_rows, x.grad(), c.replica_rows(xr.grad()));
  const int r = c.tensor().rank();
  EXPECT_TRUE(all_close(
      layer->weight.grad(), pick_segments(w.grad(), 0, segments, r, c.tp()),
      c.tol()))
      << "weight gradient";
  if (bias && !skip) {
    EXPECT_TRUE(all_close(
        layer->bias.grad(), pick_segments(b.grad(), 0, segments, r, c.tp()),
        c.tol()))
        << "bias gradient";
  }
  if (skip) {
    EXPECT_FALSE(layer->bias.grad().defined()) << "skipped bias has a gradient";
    EXPECT_TRUE(torch::equal(
        layer->bias.to(torch::kDouble),
        pick_segments(b.detach(), 0, segments, r, c.tp())))
        << "skipped bias is still this rank's shard";
  }
}

void fuzz_row(Case& c) {
  const int64_t in = c.tp() * c.draw->between(1, 4);
  const int64_t out = c.draw->between(1, 12);
  const bool bias = c.draw->coin(), parallel = c.draw->coin();
  const bool skip = bias && c.draw->between(0, 3) == 0;
  auto shape = leading_shape(c, in);
  *c.desc << "RowParallelLinear(" << in << ", " << out << ") bias=" << bias
          << " input_is_parallel=" << parallel << " skip_bias_add=" << skip
          << " input " << shape_str(shape);
  c.announce();

  torchtp::RowParallelLinear layer(torchtp::RowParallelLinearOptions(in, out)
                                       .bias(bias)
                                       .input_is_parallel(parallel)
                                       .skip_bias_add(skip)
                                       .group(c.tensor())
                                       .dtype(c.dtype));
  LinearReference ref(c, shape, in, out, bias, skip);
  const auto &w = ref.w, &b = ref.b, &x0 = ref.x0, &upstream = ref.upstream;
  const auto &xr = ref.xr, &expected = ref.expected;
  layer->load_full_weights(c.as_dtype(w), bias ? c.as_dtype(b) : b);

  auto rows = c.replica_rows(x0);
  auto x = leaf(c.as_dtype(parallel ? own(rows, -1, c.tensor()) : rows));
  auto y = layer(x);
  y.backward(c.as_dtype(c.replica_rows(upstream) * c.dp()));
  torchtp::average_gradients(*layer, c.data());

  auto x_grad_rows = c.replica_rows(xr.grad());
  expect_output_and_input_grad(
      c, y, c.replica_rows(expected.detach()), x.grad(),
      parallel ? own(x_grad_rows, -1, c.tensor()) : x_grad_rows);
  EXPECT_TRUE(
      all_close(layer->weight.grad(), own(w.grad(), 1, c.tensor()), c.tol()))
      << "weight gradient";
  if (bias && !skip) {
    EXPECT_TRUE(all_close(layer->bias.grad(), b.grad(), c.tol()))
        << "bias gradient is the full one";
  }
  if (skip) {
    EXPECT_FALSE(layer->bias.grad().defined()) << "skipped bias has a gradient";
  }
}

torch::Tensor activation_ref(const torch::Tensor& h, torchtp::Activation a) {
  return torch::gelu(h, a == torchtp::Activation::gelu_tanh ? "tanh" : "none");
}

const char* activation_name(torchtp::Activation a) {
  return a == torchtp::Activation::gelu_tanh ? "gelu_tanh" : "gelu";
}

// Full MLP weights, in float64 leaves for the reference.
struct MlpWeights {
  torch::Tensor w1, b1, w2, b2;
};

MlpWeights draw_mlp(const Case& c, int64_t d, int64_t hidden, bool bias) {
  MlpWeights m;
  m.w1 = leaf(c.full({hidden, d}, 1 / std::sqrt(double(d))));
  m.w2 = leaf(c.full({d, hidden}, 1 / std::sqrt(double(hidden))));
  // No bias is a zero bias for the reference (its gradient is not checked).
  m.b1 = bias ? leaf(c.full({hidden}, 0.1))
              : torch::zeros({hidden}, torch::kDouble);
  m.b2 = bias ? leaf(c.full({d}, 0.1)) : torch::zeros({d}, torch::kDouble);
  return m;
}

void load_mlp(
    const Case& c,
    torchtp::ParallelMLPImpl& mlp,
    const MlpWeights& m,
    bool bias) {
  mlp.fc1->load_full_weights(
      c.as_dtype(m.w1), bias ? c.as_dtype(m.b1) : torch::Tensor());
  mlp.fc2->load_full_weights(
      c.as_dtype(m.w2), bias ? c.as_dtype(m.b2) : torch::Tensor());
}

torch::Tensor mlp_ref(
    const torch::Tensor& x, const MlpWeights& m, torchtp::Activation a) {
  return F::linear(activation_ref(F::linear(x, m.w1, m.b1), a), m.w2, m.b2);
}

void expect_mlp_grads(
    const Case& c,
    torchtp::ParallelMLPImpl& mlp,
    const MlpWeights& m,
    bool bias) {
  const auto& tp = c.tensor();
  EXPECT_TRUE(
      all_close(mlp.fc1->weight.grad(), own(m.w1.grad(), 0, tp), c.tol()))
      << "fc1 weight gradient";
  EXPECT_TRUE(
      all_close(mlp.fc2->weight.grad(), own(m.w2.grad(), 1, tp), c.tol()))
      << "fc2 weight gradient";
  if (bias) {
    EXPECT_TRUE(
        all_close(mlp.fc1->bias.grad(), own(m.b1.grad(), 0, tp), c.tol()))
        << "fc1 bias gradient";
    EXPECT_TRUE(all_close(mlp.fc2->bias.grad(), m.b2.grad(), c.tol()))
        << "fc2 bias gradient";
  }
}

void fuzz_mlp(Case& c) {
  const int64_t d = c.draw->between(1, 12);
  const int64_t hidden = c.tp() * c.draw->between(1, 6);
  const bool bias = c.draw->coin();
  const auto act = c.draw->coin() ? torchtp::Activation::gelu_tanh
                                  : torchtp::Activation::gelu;
  auto shape = leading_shape(c, d);
  *c.desc << "ParallelMLP(" << d << ", " << hidden << ") bias=" << bias
          << " activation=" << activation_name(act) << " input "
          << shape_str(shape);
  c.announce();

  torchtp::ParallelMLP mlp(torchtp::ParallelMLPOptions(d, hidden)
                               .bias(bias)
                               .activation(act)
                               .group(c.tensor())
                               .dtype(c.dtype));
  auto m = draw_mlp(c, d, hidden, bias);
  load_mlp(c, *mlp, m, bias);
  auto x0 = c.full(shape);
  auto upstream = c.full(shape);

  auto xr = leaf(x0);
  auto expected = mlp_ref(xr, m, act);
  expected.backward(upstream);

  auto x = leaf(c.as_dtype(c.replica_rows(x0)));
  auto y = mlp(x);
  y.backward(c.as_dtype(c.replica_rows(upstream) * c.dp()));
  torchtp::average_gradients(*mlp, c.data());

  expect_output_and_input_grad(
      c, y, c.replica_rows(expected.detach()), x.grad(),
      c.replica_rows(xr.grad()));
  expect_mlp_grads(c, *mlp, m, bias);
}

struct AttentionWeights {
  torch::Tensor w_qkv, b_qkv, w_o, b_o;
};

AttentionWeights draw_attention(const Case& c, int64_t d, bool bias) {
  AttentionWeights a;
  a.w_qkv = leaf(c.full({3 * d, d}, 1 / std::sqrt(double(d))));
  a.w_o = leaf(c.full({d, d}, 1 / std::sqrt(double(d))));
  a.b_qkv =
      bias ? leaf(c.full({3 * d}, 0.1)) : torch::zeros({3 * d}, torch::kDouble);
  a.b_o = bias ? leaf(c.full({d}, 0.1)) : torch::zeros({d}, torch::kDouble);
  return a;
}

void load_attention(
    const Case& c,
    torchtp::ParallelSelfAttentionImpl& attn,
    const AttentionWeights& a,
    bool bias) {
  attn.qkv->load_full_weights(
      c.as_dtype(a.w_qkv), bias ? c.as_dtype(a.b_qkv) : torch::Tensor());
  attn.proj->load_full_weights(
      c.as_dtype(a.w_o), bias ? c.as_dtype(a.b_o) : torch::Tensor());
}

void expect_attention_grads(
    const Case& c,
    torchtp::ParallelSelfAttentionImpl& attn,
    const AttentionWeights& a,
    bool bias) {
  const int r = c.tensor().rank();
  EXPECT_TRUE(all_close(
      attn.qkv->weight.grad(), pick_segments(a.w_qkv.grad(), 0, 3, r, c.tp()),
      c.tol()))
      << "qkv weight gradient";
  EXPECT_TRUE(all_close(
      attn.proj->weight.grad(), own(a.w_o.grad(), 1, c.tensor()), c.tol()))
      << "output projection weight gradient";
  if (bias) {
    EXPECT_TRUE(all_close(
        attn.qkv->bias.grad(), pick_segments(a.b_qkv.grad(), 0, 3, r, c.tp()),
        c.tol()))
        << "qkv bias gradient";
    EXPECT_TRUE(all_close(attn.proj->bias.grad(), a.b_o.grad(), c.tol()))
        << "output projection bias gradient";
  }
}

void fuzz_attention(Case& c) {
  const int64_t heads = c.tp() * c.draw->between(1, 2);
  const int64_t d = heads * c.draw->between(1, 4);
  const bool bias = c.draw->coin(), causal = c.draw->coin();
  const std::vector<int64_t> shape = {
      c.dp() * c.draw->between(1, 2), c.draw->between(1, 6), d};
  *c.desc << "ParallelSelfAttention(" << d << ", heads " << heads
          << ") bias=" << bias << " causal=" << causal << " input "
          << shape_str(shape);
  c.announce();

  torchtp::ParallelSelfAttention attn(
      torchtp::ParallelSelfAttentionOptions(d, heads)
          .bias(bias)
          .causal(causal)
          .group(c.tensor())
          .dtype(c.dtype));
  auto a = draw_attention(c, d, bias);
  load_attention(c, *attn, a, bias);
  auto x0 = c.full(shape);
  auto upstream = c.full(shape);

  auto xr = leaf(x0);
  auto expected =
      attention_ref(xr, a.w_qkv, a.b_qkv, a.w_o, a.b_o, heads, causal);
  expected.backward(upstream);

  auto x = leaf(c.as_dtype(c.replica_rows(x0)));
  auto y = attn(x);
  y.backward(c.as_dtype(c.replica_rows(upstream) * c.dp()));
  torchtp::average_gradients(*attn, c.data());

  expect_output_and_input_grad(
      c, y, c.replica_rows(expected.detach()), x.grad(),
      c.replica_rows(xr.grad()));
  expect_attention_grads(c, *attn, a, bias);
}

void fuzz_transformer(Case& c) {
  const int64_t heads = c.tp() * c.draw->between(1, 2);
  // At least 8 features per LayerNorm: over 2 of them its 1 / std (up to
  // 1 / |x1 - x2|) amplifies float32 rounding past any fixed tolerance.
  const int64_t d =
      heads * std::max(c.draw->between(1, 3), (8 + heads - 1) / heads);
  // 0: the default 4 x d_model.
  const int64_t ffn = c.draw->coin() ? 0 : c.tp() * c.draw->between(1, 4);
  const int64_t hidden = ffn == 0 ? 4 * d : ffn;
  const bool bias = c.draw->coin(), causal = c.draw->coin();
  const auto act = c.draw->coin() ? torchtp::Activation::gelu_tanh
                                  : torchtp::Activation::gelu;
  const double eps = c.draw->coin() ? 1e-5 : 1e-3;
  const std::vector<int64_t> shape = {
      c.dp() * c.draw->between(1, 2), c.draw->between(1, 5), d};
  *c.desc << "TransformerLayer(" << d << ", heads " << heads
          << ") ffn_hidden=" << ffn << " bias=" << bias << " causal=" << causal
          << " activation=" << activation_name(act) << " eps=" << eps
          << " input " << shape_str(shape);
  c.announce();

  torchtp::TransformerLayer layer(torchtp::TransformerLayerOptions(d, heads)
                                      .ffn_hidden(ffn)
                                      .bias(bias)
                                      .causal(causal)
                                      .activation(act)
                                      .layer_norm_eps(eps)
                                      .group(c.tensor())
                                      .dtype(c.dtype));
  auto a = draw_attention(c, d, bias);
  auto m = draw_mlp(c, d, hidden, bias);
  load_attention(c, *layer->attention, a, bias);
  load_mlp(c, *layer->mlp, m, bias);
  // LayerNorms away from their (1, 0) init, the same on every rank.
  std::vector<torch::Tensor> ln;
  for (int i = 0; i < 4; ++i) {
    ln.push_back(leaf(c.full({d}, 0.2) + (i % 2 == 0 ? 1.0 : 0.0)));
  }
  {
    torch::NoGradGuard no_grad;
    layer->ln1->weight.copy_(ln[0]);
    layer->ln1->bias.copy_(ln[1]);
    layer->ln2->weight.copy_(ln[2]);
    layer->ln2->bias.copy_(ln[3]);
  }
  auto x0 = c.full(shape);
  auto upstream = c.full(shape);

  auto norm = [&](const torch::Tensor& x, int i) {
    return F::layer_norm(
        x, F::LayerNormFuncOptions({d}).weight(ln[i]).bias(ln[i + 1]).eps(eps));
  };
  auto xr = leaf(x0);
  auto h = xr + attention_ref(
                    norm(xr, 0), a.w_qkv, a.b_qkv, a.w_o, a.b_o, heads, causal);
  auto expected = h + mlp_ref(norm(h, 2), m, act);
  expected.backward(upstream);

  auto x = leaf(c.as_dtype(c.replica_rows(x0)));
  auto y = layer(x);
  y.backward(c.as_dtype(c.replica_rows(upstream) * c.dp()));
  torchtp::average_gradients(*layer, c.data());

  expect_output_and_input_grad(
      c, y, c.replica_rows(expected.detach()), x.grad(),
      c.replica_rows(xr.grad()));
  expect_attention_grads(c, *layer->attention, a, bias);
  expect_mlp_grads(c, *layer->mlp, m, bias);
  const std::vector<torch::Tensor> ln_grads = {
      layer->ln1->weight.grad(), layer->ln1->bias.grad(),
      layer->ln2->weight.grad(), layer->ln2->bias.grad()};
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(all_close(ln_grads[i], ln[i].grad(), c.tol()))
        << "LayerNorm parameter " << i << " gradient (replicated)";
  }
}

// ids -> VocabParallelEmbedding -> ColumnParallelLinear (vocabulary split,
// no gather) -> vocab_parallel_cross_entropy, against F::embedding,
// F::linear and F::cross_entropy on the real columns of the full logits.
void fuzz_embedding_cross_entropy(Case& c) {
  using Reduction = torchtp::VocabParallelCrossEntropyOptions::Reduction;
  const int64_t real_v = c.draw->between(2, 20);
  const int64_t padded_v =
      ((real_v + c.tp() - 1) / c.tp() + c.draw->between(0, 1)) * c.tp();
  const int64_t dim = c.draw->between(1, 8);
  const bool bias = c.draw->coin();
  const double smoothing = c.draw->coin() ? 0.0 : 0.1;
  const auto reduction = static_cast<Reduction>(c.draw->between(0, 2));
  // Mean over the replicas' means is the full mean only when every replica
  // counts as many targets: ignored targets then only at one replica.
  const bool ignore =
      c.dp() == 1 || reduction != Reduction::mean ? c.draw->coin() : false;
  const std::vector<int64_t> ids_shape = {
      c.dp() * c.draw->between(1, 3), c.draw->between(1, 5)};
  const char* reduction_names[] = {"none", "mean", "sum"};
  *c.desc << "VocabParallelEmbedding(" << padded_v << ", " << dim
          << ") + ColumnParallelLinear(bias=" << bias
          << ") + vocab_parallel_cross_entropy(vocab_size=" << real_v
          << ", label_smoothing=" << smoothing
          << ", reduction=" << reduction_names[int(reduction)]
          << ", ignored targets=" << ignore << ") ids " << shape_str(ids_shape);
  c.announce();

  torchtp::VocabParallelEmbedding embedding(
      torchtp::VocabParallelEmbeddingOptions(padded_v, dim)
          .group(c.tensor())
          .dtype(c.dtype));
  torchtp::ColumnParallelLinear head(
      torchtp::ColumnParallelLinearOptions(dim, padded_v)
          .bias(bias)
          .group(c.tensor())
          .dtype(c.dtype));
  auto table = leaf(c.full({padded_v, dim}));
  auto w = leaf(c.full({padded_v, dim}, 1 / std::sqrt(double(dim))));
  auto b = bias ? leaf(c.full({padded_v}, 0.1)) : torch::Tensor();
  embedding->load_full_weights(c.as_dtype(table));
  head->load_full_weights(c.as_dtype(w), bias ? c.as_dtype(b) : b);
  auto ids = torch::randint(0, real_v, ids_shape, torch::kLong);
  auto target = torch::randint(0, real_v, ids_shape, torch::kLong);
  if (ignore) {
    target.masked_fill_(torch::rand(ids_shape) < 0.3, -100);
    // At least one target counts: a mean over none is 0/0.
    target[0][0] = 0;
  }
  auto upstream = reduction == Reduction::none
                      ? c.full(ids_shape)
                      : torch::ones({}, torch::kDouble);

  auto logits = F::linear(F::embedding(ids, table), w, b);
  auto opts = F::CrossEntropyFuncOptions().ignore_index(-100).label_smoothing(
      smoothing);
  switch (reduction) {
    case Reduction::none:
      opts.reduction(torch::kNone);
      break;
    case Reduction::mean:
      opts.reduction(torch::kMean);
      break;
    case Reduction::sum:
      opts.reduction(torch::kSum);
      break;
  }
  auto expected = F::cross_entropy(
      logits.narrow(-1, 0, real_v).reshape({-1, real_v}), target.reshape({-1}),
      opts);
  if (reduction == Reduction::none) {
    expected = expected.reshape(ids_shape);
  }
  expected.backward(upstream);

  auto loss = torchtp::vocab_parallel_cross_entropy(
      head(embedding(c.replica_rows(ids))), c.replica_rows(target),
      torchtp::VocabParallelCrossEntropyOptions()
          .label_smoothing(smoothing)
          .reduction(reduction)
          .vocab_size(real_v)
          .group(c.tensor()));
  // A replica's mean is dp times its share of the full mean; its sum (and
  // its rows) are its share.
  auto replica_up = reduction == Reduction::none
                        ? c.replica_rows(upstream) * c.dp()
                        : upstream * (reduction == Reduction::sum ? c.dp() : 1);
  loss.backward(replica_up.to(loss.scalar_type()));
  torchtp::average_gradients(*embedding, c.data());
  torchtp::average_gradients(*head, c.data());

  if (reduction == Reduction::none) {
    EXPECT_TRUE(all_close(loss, c.replica_rows(expected.detach()), c.tol()))
        << "loss";
  } else {
    auto total = loss.detach().to(torch::kDouble).clone();
    c.data().all_reduce(total);
    if (reduction == Reduction::mean) {
      total /= c.dp();
    }
    EXPECT_TRUE(all_close(total, expected.detach(), c.tol())) << "loss";
  }
  EXPECT_TRUE(all_close(
      embedding->weight.grad(), own(table.grad(), 0, c.tensor()), c.tol()))
      << "embedding gradient";
  EXPECT_TRUE(
      all_close(head->weight.grad(), own(w.grad(), 0, c.tensor()), c.tol()))
      << "output weight gradient";
  if (bias) {
    EXPECT_TRUE(
        all_close(head->bias.grad(), own(b.grad(), 0, c.tensor()), c.tol()))
        << "output bias gradient";
  }
}

using Fuzz = void (*)(Case&);
const std::vector<Fuzz>& kinds() {
  static const std::vector<Fuzz> all = {
      fuzz_column,    fuzz_row,         fuzz_mlp,
      fuzz_attention, fuzz_transformer, fuzz_embedding_cross_entropy};
  return all;
}

int failures_so_far() {
  return ::testing::UnitTest::GetInstance()
      ->current_test_info()
      ->result()
      ->total_part_count();
}

} // namespace

TEST(Fuzz, LayersAndBlocksMatchUnsharded) {
  auto g = world();
  // Rank 0's seed for every rank, so every rank draws the same cases.
  auto seed_t = torch::zeros({1}, torch::kLong);
  if (g.rank() == 0) {
    const uint64_t drawn = (uint64_t(std::random_device{}()) << 20) ^
                           uint64_t(std::random_device{}());
    // Kept below 2^63 so it travels in a kLong.
    seed_t[0] = int64_t(env_u64("TORCHTP_FUZZ_SEED", drawn) & INT64_MAX);
  }
  g.broadcast(seed_t, 0);
  const uint64_t seed = uint64_t(seed_t.item<int64_t>());
  const uint64_t cases = env_u64("TORCHTP_FUZZ_CASES", 40);
  const uint64_t first = env_u64("TORCHTP_FUZZ_FIRST", 0);

  std::vector<Layout> layouts;
  for (int tp = 1; tp <= g.size(); ++tp) {
    if (g.size() % tp == 0) {
      layouts.push_back(
          {tp, g.size() / tp, torchtp::make_parallel_groups(g, tp)});
    }
  }
  const std::string backend = g.size() > 1 ? g.backend() : "self";
  if (g.rank() == 0) {
    std::cout << "fuzz: seed " << seed << ", cases " << first << ".."
              << first + cases - 1 << ", " << g.size() << " ranks, backend "
              << backend << std::endl;
  }
  const auto replay = [&](uint64_t i) {
    std::ostringstream s;
    s << "replay: TORCHTP_FUZZ_SEED=" << seed << " TORCHTP_FUZZ_FIRST=" << i
      << " TORCHTP_FUZZ_CASES=1 TORCHTP_BACKEND=" << backend
      << " torchtp-run --nproc-per-node " << g.size() << " test_fuzz";
    return s.str();
  };

  for (uint64_t i = first; i < first + cases; ++i) {
    const uint64_t case_seed = mix(seed ^ mix(i));
    Draw draw(case_seed);
    const Layout& layout =
        layouts[draw.between(0, int64_t(layouts.size()) - 1)];
    const auto dtype = draw.coin() ? torch::kDouble : torch::kFloat;
    const auto kind = kinds()[draw.between(0, int64_t(kinds().size()) - 1)];
    std::ostringstream desc;
    desc << "case " << i << ": TP " << layout.tp << " x DP " << layout.dp
         << ", " << c10::toString(dtype) << ", ";
    Case c{&layout, dtype, &draw, &desc, g.rank() == 0};
    // Weights and data from the case's seed: the same full tensors on every
    // rank.
    torch::manual_seed(case_seed);
    const int before = failures_so_far();
    try {
      kind(c);
    } catch (const c10::Error& e) {
      ADD_FAILURE() << desc.str() << "\nraised: " << e.what_without_backtrace()
                    << "\n"
                    << replay(i);
      // A rank that raised alone would leave the others waiting in the
      // case's collectives: break the job's groups so they fail at once.
      torchtp::report_failure(e);
      return;
    }
    if (failures_so_far() != before) {
      ADD_FAILURE() << "in " << desc.str() << "\n" << replay(i);
    }
  }
}
