#include "torchtp/transformer.h"

#include "torchtp/detail/check.h"
#include "torchtp/detail/dtype.h"
#include "torchtp/detail/options.h"

#include <cmath>
#include <limits>

namespace torchtp {
namespace {

constexpr const char* kAttention = "torchtp::ParallelSelfAttention";

std::shared_ptr<RngTracker> resolve_rng(
    const std::shared_ptr<RngTracker>& rng, const Group& group) {
  return rng ? rng : std::make_shared<RngTracker>(0, group);
}

} // namespace

// ---------------------------------------------------------------------------
// ParallelMLP

ParallelMLPImpl::ParallelMLPImpl(ParallelMLPOptions options_)
    : options(std::move(options_)) {
  reset();
}

void ParallelMLPImpl::reset() {
  fc1 = register_module(
      "fc1", ColumnParallelLinear(ColumnParallelLinearOptions(
                                      options.d_model(), options.ffn_hidden())
                                      .bias(options.bias())
                                      .gather_output(false)
                                      .uneven(options.uneven())
                                      .group(options.group())
                                      .dtype(options.dtype())));
  fc2 = register_module(
      "fc2", RowParallelLinear(RowParallelLinearOptions(
                                   options.ffn_hidden(), options.d_model())
                                   .bias(options.bias())
                                   .input_is_parallel(true)
                                   .uneven(options.uneven())
                                   .group(options.group())
                                   .dtype(options.dtype())));
}

torch::Tensor ParallelMLPImpl::forward(const torch::Tensor& x) {
  const char* approximate =
      options.activation() == Activation::gelu_tanh ? "tanh" : "none";
  return fc2(torch::gelu(fc1(x), approximate));
}

void ParallelMLPImpl::pretty_print(std::ostream& stream) const {
  stream << "torchtp::ParallelMLP(d_model=" << options.d_model()
         << ", ffn_hidden=" << options.ffn_hidden() << ")";
}

// ---------------------------------------------------------------------------
// ParallelSelfAttention

ParallelSelfAttentionImpl::ParallelSelfAttentionImpl(
    ParallelSelfAttentionOptions options_)
    : options(std::move(options_)) {
  reset();
}

void ParallelSelfAttentionImpl::reset() {
  Group group = detail::group_or_default(options.group());
  const int64_t d = options.d_model(), heads = options.num_heads();
  TORCHTP_CHECK(
      heads > 0 && d > 0 && d % heads == 0, kAttention, group, "d_model (", d,
      ") is not divisible by num_heads (", heads, ")");
  // Checked here, before the projections, so the message speaks of heads.
  local_heads_ = Partition(
                     heads, group.size(), group.rank(),
                     std::string(kAttention) + ": num_heads",
                     options.uneven())
                     .local_size();
  const int64_t head_dim = d / heads;
  rng_ = resolve_rng(options.rng(), group);
  qkv = register_module(
      "qkv", ColumnParallelLinear(ColumnParallelLinearOptions(d, 3 * d)
                                      .bias(options.bias())
                                      .segments(3)
                                      .uneven(options.uneven())
                                      .split_unit(head_dim)
                                      .group(group)
                                      .dtype(options.dtype())));
  proj = register_module(
      "proj", RowParallelLinear(RowParallelLinearOptions(d, d)
                                    .bias(options.bias())
                                    .input_is_parallel(true)
                                    .uneven(options.uneven())
                                    .split_unit(head_dim)
                                    .group(group)
                                    .dtype(options.dtype())));
}

void ParallelSelfAttentionImpl::check_input(const torch::Tensor& x) const {
  TORCHTP_CHECK(
      x.dim() == 3 && x.size(2) == options.d_model(), kAttention,
      qkv->shard_group(), "expected input [batch, seq, ", options.d_model(),
      "] but got ", x.sizes());
}

std::array<torch::Tensor, 3> ParallelSelfAttentionImpl::project(
    const torch::Tensor& x) {
  const int64_t b = x.size(0), s = x.size(1);
  const int64_t hd = options.d_model() / options.num_heads();
  // [b, s, 3 * local_heads * hd] -> 3 x [b, local_heads, s, hd]
  auto parts =
      qkv(x).view({b, s, 3, local_heads_, hd}).permute({2, 0, 3, 1, 4});
  return {parts[0], parts[1], parts[2]};
}

torch::Tensor ParallelSelfAttentionImpl::attend(
    const torch::Tensor& q,
    const torch::Tensor& k,
    const torch::Tensor& v,
    const torch::Tensor& allowed,
    bool with_dropout) {
  const int64_t b = q.size(0), s = q.size(2), hd = q.size(3);
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(double(hd));
  if (allowed.defined()) {
    scores = scores.masked_fill(
        allowed.logical_not(), -std::numeric_limits<float>::infinity());
  }
  // Reduced-precision scores are normalised in float32.
  auto probs =
      torch::softmax(scores.to(detail::compute_dtype(scores.scalar_type())), -1)
          .to(q.scalar_type());
  if (with_dropout) {
    probs = dropout(
        probs, options.attention_dropout(), is_training(), rng_->sharded());
  }
  auto context = torch::matmul(probs, v)    // [b, lh, s, hd]
                     .permute({0, 2, 1, 3}) // [b, s, lh, hd]
                     .reshape({b, s, local_heads_ * hd});
  return proj(context);
}

torch::Tensor ParallelSelfAttentionImpl::forward(const torch::Tensor& x) {
  check_input(x);
  auto [q, k, v] = project(x);
  torch::Tensor allowed;
  if (options.causal()) {
    const int64_t s = x.size(1);
    allowed = torch::ones({s, s}, torch::kBool).tril();
  }
  return attend(q, k, v, allowed, /*with_dropout=*/true);
}

torch::Tensor ParallelSelfAttentionImpl::forward_cached(
    const torch::Tensor& x, KVCache& cache, const torch::Tensor& key_mask) {
  check_input(x);
  const int64_t b = x.size(0), s = x.size(1);
  const int64_t past = cache.length, total = past + s;
  TORCHTP_CHECK(
      total <= cache.capacity, kAttention, qkv->shard_group(),
      "the cache holds ", cache.capacity, " positions; ", past,
      " are used and ", s, " more were given");
  TORCHTP_CHECK(
      key_mask.defined() && key_mask.scalar_type() == torch::kBool &&
          key_mask.sizes() == torch::IntArrayRef({b, total}),
      kAttention, qkv->shard_group(), "expected a bool key_mask [", b, ", ",
      total, "] (cached plus new positions) but got ",
      key_mask.defined() ? c10::str(key_mask.sizes()) : "none");
  auto [q, k, v] = project(x);
  if (!cache.k.defined()) {
    TORCHTP_CHECK(
        past == 0, kAttention, qkv->shard_group(), "the cache claims ", past,
        " positions but holds no tensors");
    cache.k =
        torch::empty({b, local_heads_, cache.capacity, k.size(3)}, k.options());
    cache.v = torch::empty_like(cache.k);
  }
  TORCHTP_CHECK(
      cache.k.size(0) == b, kAttention, qkv->shard_group(),
      "the cache was filled "
      "for a batch of ",
      cache.k.size(0), ", not ", b);
  cache.k.narrow(2, past, s).copy_(k);
  cache.v.narrow(2, past, s).copy_(v);
  cache.length = total;
  // New position i (slot past + i) sees the real slots up to its own, and
  // always itself, so that a padding row stays finite.
  auto slot = torch::arange(total, torch::kLong);
  auto query_slot = torch::arange(past, total, torch::kLong).unsqueeze(1);
  auto causal = slot.unsqueeze(0) <= query_slot;          // [s, total]
  auto self = slot.unsqueeze(0) == query_slot;            // [s, total]
  auto allowed = causal & (key_mask.unsqueeze(1) | self); // [b, s, total]
  return attend(
      q, cache.k.narrow(2, 0, total), cache.v.narrow(2, 0, total),
      allowed.unsqueeze(1), /*with_dropout=*/false);
}

void ParallelSelfAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "torchtp::ParallelSelfAttention(d_model=" << options.d_model()
         << ", num_heads=" << options.num_heads() << " (" << local_heads_
         << " on this rank), causal=" << std::boolalpha << options.causal()
         << ")";
}

// ---------------------------------------------------------------------------
// TransformerLayer

TransformerLayerImpl::TransformerLayerImpl(TransformerLayerOptions options_)
    : options(std::move(options_)) {
  reset();
}

void TransformerLayerImpl::reset() {
  Group group = detail::group_or_default(options.group());
  rng_ = resolve_rng(options.rng(), group);
  const int64_t d = options.d_model();
  const int64_t ffn = options.ffn_hidden() > 0 ? options.ffn_hidden() : 4 * d;
  auto ln = [&] {
    torch::nn::LayerNorm norm(
        torch::nn::LayerNormOptions({d}).eps(options.layer_norm_eps()));
    if (options.dtype().has_value()) {
      norm->to(*options.dtype());
    }
    return norm;
  };
  ln1 = register_module("ln1", ln());
  attention = register_module(
      "attention",
      ParallelSelfAttention(ParallelSelfAttentionOptions(d, options.num_heads())
                                .causal(options.causal())
                                .bias(options.bias())
                                .attention_dropout(options.attention_dropout())
                                .uneven(options.uneven())
                                .rng(rng_)
                                .group(group)
                                .dtype(options.dtype())));
  ln2 = register_module("ln2", ln());
  mlp = register_module(
      "mlp", ParallelMLP(ParallelMLPOptions(d, ffn)
                             .bias(options.bias())
                             .activation(options.activation())
                             .uneven(options.uneven())
                             .group(group)
                             .dtype(options.dtype())));
}

torch::Tensor TransformerLayerImpl::forward_cached(
    const torch::Tensor& x, KVCache& cache, const torch::Tensor& key_mask) {
  auto h = x + attention->forward_cached(ln1(x), cache, key_mask);
  return h + mlp(ln2(h));
}

torch::Tensor TransformerLayerImpl::forward(const torch::Tensor& x) {
  const double p = options.hidden_dropout();
  auto h = x + dropout(attention(ln1(x)), p, is_training(), rng_->replicated());
  return h + dropout(mlp(ln2(h)), p, is_training(), rng_->replicated());
}

} // namespace torchtp
