#pragma once

// The unsharded references the distributed tests compare against, and the
// helpers that take a rank's slice of them: every rank builds the same full
// reference from the same seeds with plain LibTorch (deliberately not the
// library's fused code paths) and compares its own slice of outputs and
// gradients.

#include "test_util.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace torchtp::testing {

namespace F = torch::nn::functional;

// A leaf copy of `t` for the reference graph, so its gradient is separate
// from the one of the tensor under test.
inline torch::Tensor leaf(const torch::Tensor& t) {
  return t.detach().clone().requires_grad_();
}

// This rank's equal chunk of `full` along `dim` (what Partition gives for
// even splits).
inline torch::Tensor own(
    const torch::Tensor& full, int64_t dim, const torchtp::Group& g = world()) {
  return full.chunk(g.size(), dim)[g.rank()];
}

// Rows of a full fused [Wq; Wk; Wv] tensor ([3 d, ...]) that rank `rank` of
// `ws` holds: its part of each of the Q, K and V blocks, in block order.
inline torch::Tensor pick_qkv_rows(
    const torch::Tensor& full, int64_t rank, int64_t ws) {
  auto sizes = full.sizes().vec();
  const int64_t block = sizes[0] / 3;
  std::vector<int64_t> split = {3, ws, block / ws};
  split.insert(split.end(), sizes.begin() + 1, sizes.end());
  auto out = sizes;
  out[0] = sizes[0] / ws;
  return full.reshape(split).select(1, rank).reshape(out);
}

// The inverse of pick_qkv_rows over the group: the all-gather is rank-major
// [r0: q k v, r1: q k v, ..], the full tensor is block-major.
inline torch::Tensor gather_qkv(
    const torchtp::Group& g, const torch::Tensor& shard) {
  auto gathered = g.all_gather(shard.detach(), 0);
  auto sizes = shard.sizes().vec();
  std::vector<int64_t> split = {g.size(), 3, sizes[0] / 3};
  split.insert(split.end(), sizes.begin() + 1, sizes.end());
  auto full = sizes;
  full[0] = sizes[0] * g.size();
  return gathered.reshape(split).transpose(0, 1).reshape(full);
}

// Whether a parameter name is a fused [q; k; v] weight or bias.
inline bool is_qkv(const std::string& name) {
  auto ends_with = [&](const std::string& suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) ==
               0;
  };
  return ends_with("qkv.weight") || ends_with("qkv.bias");
}

// Unsharded causal multi-head self-attention from the stacked
// [Wq; Wk; Wv] weight, one head at a time: deliberately not the library's
// fused reshapes.
inline torch::Tensor attention_ref(
    const torch::Tensor& x,
    const torch::Tensor& w_qkv,
    const torch::Tensor& b_qkv,
    const torch::Tensor& w_o,
    const torch::Tensor& b_o,
    int64_t heads,
    bool causal) {
  const int64_t s = x.size(1), d = x.size(2), hd = d / heads;
  auto project = [&](int64_t block) {
    return F::linear(
        x, w_qkv.narrow(0, block * d, d), b_qkv.narrow(0, block * d, d));
  };
  auto q_all = project(0), k_all = project(1), v_all = project(2);
  auto future = torch::ones({s, s}, torch::kBool).triu(1);
  std::vector<torch::Tensor> context;
  for (int64_t h = 0; h < heads; ++h) {
    auto q = q_all.narrow(-1, h * hd, hd);
    auto k = k_all.narrow(-1, h * hd, hd);
    auto v = v_all.narrow(-1, h * hd, hd);
    auto scores = torch::bmm(q, k.transpose(1, 2)) / std::sqrt(double(hd));
    if (causal) {
      scores =
          scores.masked_fill(future, -std::numeric_limits<double>::infinity());
    }
    context.push_back(torch::bmm(torch::softmax(scores, -1), v));
  }
  return F::linear(torch::cat(context, -1), w_o, b_o);
}

// Unsharded ParallelMLP: fc2(gelu(fc1(x))).
inline torch::Tensor mlp_ref(
    const torch::Tensor& x,
    const torch::Tensor& w1,
    const torch::Tensor& b1,
    const torch::Tensor& w2,
    const torch::Tensor& b2) {
  return F::linear(torch::gelu(F::linear(x, w1, b1)), w2, b2);
}

// torch::nn::LayerNorm over the last dim with the layer's default eps.
inline torch::Tensor layer_norm_ref(
    const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  return F::layer_norm(
      x, F::LayerNormFuncOptions({x.size(-1)}).weight(w).bias(b).eps(1e-5));
}

// Every parameter gradient of the sharded `model` against the unsharded
// `full` model's: replicated parameters directly, split ones after
// gathering the shards over `tp` along the dim whose size differs (the
// fused qkv reordered into block order). Every rank calls the same gathers
// in the same order: the parameter lists are the same on every rank.
inline void expect_grads_match(
    torch::nn::Module& model,
    torch::nn::Module& full,
    const torchtp::Group& tp) {
  auto params = model.named_parameters();
  auto full_params = full.named_parameters();
  EXPECT_FALSE(params.is_empty());
  EXPECT_EQ(params.size(), full_params.size());
  for (const auto& item : params) {
    SCOPED_TRACE(item.key());
    const auto* ref = full_params.find(item.key());
    EXPECT_NE(ref, nullptr) << "no parameter " << item.key();
    if (ref == nullptr || !item.value().grad().defined()) {
      EXPECT_TRUE(item.value().grad().defined()) << "no gradient";
      continue;
    }
    const auto grad = item.value().grad();
    const auto full_grad = ref->grad();
    if (grad.sizes() == full_grad.sizes()) {
      EXPECT_TRUE(all_close(grad, full_grad));
      continue;
    }
    if (is_qkv(item.key())) {
      EXPECT_TRUE(all_close(gather_qkv(tp, grad), full_grad));
      continue;
    }
    int64_t dim = 0;
    while (dim < grad.dim() && grad.size(dim) == full_grad.size(dim)) {
      ++dim;
    }
    EXPECT_TRUE(all_close(tp.all_gather(grad, dim), full_grad));
  }
}

// Whether every rank holds the same bits in `t` (a replicated parameter
// or gradient: replicas that differ in the last bit drift apart).
inline ::testing::AssertionResult same_on_every_rank(
    const torch::Tensor& t, const torchtp::Group& g = world()) {
  auto all = g.all_gather(t.detach().contiguous().unsqueeze(0), 0);
  for (int64_t r = 1; r < g.size(); ++r) {
    if (!torch::equal(all[r], all[0])) {
      return ::testing::AssertionFailure()
             << "rank " << r << " differs from rank 0 by up to "
             << (all[r] - all[0]).abs().max().item<double>();
    }
  }
  return ::testing::AssertionSuccess();
}

// The initialisation as it was before any layer was split: the full
// tensors an unsharded module draws from the global generator, written here
// from the documented rule (torch::nn::Linear, torch::nn::Embedding), in
// `dtype`, or in float32 and rounded for a reduced-precision dtype. Every
// rank draws the whole of each and keeps its slice.
struct FullLinearDraw {
  torch::Tensor w, b;
};

inline torch::Dtype draw_dtype_of(torch::Dtype dtype) {
  return dtype == torch::kBFloat16 || dtype == torch::kHalf ? torch::kFloat
                                                            : dtype;
}

// torch::nn::Linear(in, out): kaiming_uniform_(a = sqrt(5)) on the weight,
// then the bias uniform in +-1/sqrt(in).
inline FullLinearDraw full_linear_draw(
    int64_t in, int64_t out, bool bias, torch::Dtype dtype) {
  torch::NoGradGuard no_grad;
  auto w = torch::empty({out, in}, draw_dtype_of(dtype));
  torch::nn::init::kaiming_uniform_(w, std::sqrt(5));
  torch::Tensor b;
  if (bias) {
    b = torch::empty({out}, draw_dtype_of(dtype));
    const auto bound = 1 / std::sqrt(in);
    torch::nn::init::uniform_(b, -bound, bound);
    b = b.to(dtype);
  }
  return {w.to(dtype), b};
}

// torch::nn::Embedding(num, dim): normal_(0, 1).
inline torch::Tensor full_embedding_draw(
    int64_t num, int64_t dim, torch::Dtype dtype) {
  torch::NoGradGuard no_grad;
  auto t = torch::empty({num, dim}, draw_dtype_of(dtype));
  torch::nn::init::normal_(t);
  return t.to(dtype);
}

// The next numbers of the global generator, uniform and normal (the normal
// ones through both of normal_'s paths): equal after two draws when the
// draws left the generator in the same state.
inline torch::Tensor next_numbers() {
  return torch::cat(
      {torch::rand({3}, torch::kDouble), torch::randn({5}, torch::kDouble),
       torch::randn({20}, torch::kDouble)});
}

// Sets the block of the sharded initialisation for a scope.
struct InitBlockBytes {
  explicit InitBlockBytes(int64_t bytes)
      : previous(torchtp::detail::set_init_block_bytes(bytes)) {}
  ~InitBlockBytes() {
    torchtp::detail::set_init_block_bytes(previous);
  }
  InitBlockBytes(const InitBlockBytes&) = delete;
  InitBlockBytes& operator=(const InitBlockBytes&) = delete;
  int64_t previous;
};

// The blocks the initialisation tests draw in: one row (or 16 elements) at
// a time, a few rows that straddle the shards' edges, and the default (one
// block for layers this small).
inline std::vector<int64_t> init_block_sizes() {
  return {1, 100, torchtp::detail::init_block_bytes()};
}

// The GPT of the invariance tests: sizes fixed across world sizes 1-4 (12
// heads, padded vocabulary 24), so its full weights are the same at each.
inline torchtp::GPTOptions small_gpt() {
  return torchtp::GPTOptions(/*vocab_size=*/13, /*max_seq_len=*/8)
      .d_model(48)
      .num_heads(12)
      .num_layers(2)
      .vocab_pad_multiple(12)
      .dtype(torch::kDouble);
}

} // namespace torchtp::testing
