#include "torchtp/transformer.h"

#include "detail/activation_kernels.h"
#include "detail/check.h"
#include "detail/dtype.h"
#include "detail/fused_linear.h"
#include "detail/options.h"
#include "detail/paged_attention.h"
#include "detail/sequence_parallel.h"
#include "torchtp/mappings.h"

#include <sys/mman.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

namespace torchtp {
namespace {

constexpr const char* kMLP = "torchtp::ParallelMLP";
constexpr const char* kAttention = "torchtp::ParallelSelfAttention";
constexpr const char* kLayer = "torchtp::TransformerLayer";

std::shared_ptr<RngTracker> resolve_rng(
    const std::shared_ptr<RngTracker>& rng, const Group& group) {
  return rng ? rng : std::make_shared<RngTracker>(0, group);
}

// An empty key/value cache tensor whose memory becomes resident only as
// positions are written. A cache is sized for the whole context and mostly
// unwritten; from malloc's heap it would often take pages that earlier
// temporaries had touched and freed, resident from the start: a Qwen2.5-0.5B
// prefill at batch 8 grew the process by 23 MB a layer that way (4096
// positions of float32 keys and values, 16.8 MB each). Its own anonymous
// mapping from 1 MiB up; smaller ones are torch::empty.
torch::Tensor empty_cache_tensor(
    torch::IntArrayRef sizes,
    const torch::TensorOptions& options,
    const Group& group) {
  int64_t bytes = static_cast<int64_t>(options.dtype().itemsize());
  for (const auto size : sizes) {
    bytes *= size;
  }
  if (bytes < (int64_t{1} << 20)) {
    return torch::empty(sizes, options);
  }
  const auto length = static_cast<size_t>(bytes);
  void* memory = mmap(
      nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
      -1, 0);
  TORCHTP_CHECK(
      memory != MAP_FAILED, kAttention, group, "cannot map ", bytes,
      " bytes for the key/value cache ", sizes, ": ", std::strerror(errno));
  return torch::from_blob(
      memory, sizes, [length](void* p) { munmap(p, length); }, options);
}

// A row-parallel layer's output when the caller reduces it (sequence
// parallelism builds it with reduce_output(false)), for a whole sequence:
// all-reduced, then the bias added once.
torch::Tensor reduce_whole(
    const torch::Tensor& partial, const RowParallelLinear& row) {
  auto y = reduce_from_tp_region(partial, row->shard_group());
  return row->bias.defined() ? y + row->bias : y;
}

// A row-parallel layer's output as a part of the sequence: reduce-scattered,
// then the bias added once.
torch::Tensor reduce_to_shard(
    const torch::Tensor& partial,
    const RowParallelLinear& row,
    const Partition& seq) {
  const auto& group = row->shard_group();
  return detail::add_bias_on_shard(
      detail::reduce_scatter_sequence(partial, group, seq), row->bias, group);
}

// detail::paged_attention over tensors: `query [tokens, heads, hd]` (any
// floating dtype; read in float64 beside a float64 pool, else float32) and
// pools of float32, float64 or bfloat16 (read as stored). Returns the
// context [tokens, heads, hd] in the dtype the query was read in.
torch::Tensor pool_attention(
    const torch::Tensor& query,
    const torch::Tensor& k_pool,
    const torch::Tensor& v_pool,
    const int64_t* kv_of_head,
    const int64_t* token_seq,
    const int64_t* token_pos,
    const int64_t* block_tables,
    const detail::PagedAttentionShape& shape,
    const bool* key_mask = nullptr) {
  const auto dtype = k_pool.scalar_type();
  const double scale = 1.0 / std::sqrt(double(shape.head_dim));
  const auto q =
      query.to(dtype == torch::kDouble ? torch::kDouble : torch::kFloat)
          .contiguous();
  auto context = torch::empty_like(q);
  if (dtype == torch::kDouble) {
    detail::paged_attention<double>(
        q.data_ptr<double>(), k_pool.data_ptr<double>(),
        v_pool.data_ptr<double>(), kv_of_head, token_seq, token_pos,
        block_tables, scale, context.data_ptr<double>(), shape, key_mask);
  } else if (dtype == torch::kBFloat16) {
    detail::paged_attention<float, uint16_t>(
        q.data_ptr<float>(),
        reinterpret_cast<const uint16_t*>(k_pool.data_ptr()),
        reinterpret_cast<const uint16_t*>(v_pool.data_ptr()), kv_of_head,
        token_seq, token_pos, block_tables, scale, context.data_ptr<float>(),
        shape, key_mask);
  } else {
    TORCH_INTERNAL_ASSERT(dtype == torch::kFloat);
    detail::paged_attention<float>(
        q.data_ptr<float>(), k_pool.data_ptr<float>(),
        v_pool.data_ptr<float>(), kv_of_head, token_seq, token_pos,
        block_tables, scale, context.data_ptr<float>(), shape, key_mask);
  }
  return context;
}

// softmax(q k^T / sqrt(hd)) v of new tokens `q [b, heads, s, hd]` at
// positions past .. past+s-1 over `cache` (already holding them), seeing
// only the positions `key_mask [b, past+s]` marks and their own, through
// detail::paged_attention (each sequence's cache one block), reading the
// cache in place. A step's dozen LibTorch operations per layer (masks, two
// batched products over a strided cache, softmax; for bfloat16 a float32
// copy of the cache, for grouped heads a copy per query head) become one
// call: 0.33-0.40x their time for a 1000-token prompt, mostly 0.4-0.6x
// at 512, about even at 40-128 (docs/performance.md). Returns the context
// `[b, s, heads * hd]` in q's dtype, or an undefined tensor where the
// kernel does not apply (gradients recorded, a dtype or layout it does
// not read).
torch::Tensor kernel_attention(
    const torch::Tensor& q,
    const KVCache& cache,
    const torch::Tensor& key_mask,
    const torch::Tensor& kv_of_head) {
  const int64_t b = q.size(0), heads = q.size(1), s = q.size(2),
                hd = q.size(3);
  const auto dtype = cache.k.scalar_type();
  const bool readable =
      (dtype == torch::kFloat || dtype == torch::kDouble ||
       dtype == torch::kBFloat16) &&
      cache.k.is_contiguous() &&
      cache.v.is_contiguous() && cache.v.sizes() == cache.k.sizes();
  const bool records_grad = torch::GradMode::is_enabled() &&
                            (q.requires_grad() || cache.k.requires_grad() ||
                             cache.v.requires_grad());
  if (!readable || records_grad) {
    return {};
  }
  const int64_t kv_heads = cache.k.size(1), capacity = cache.k.size(2);
  const int64_t past = cache.length - s, tokens = b * s;
  std::vector<int64_t> seq(tokens), pos(tokens), tables(b), kv(heads);
  for (int64_t t = 0; t < tokens; ++t) {
    seq[t] = t / s;
    pos[t] = past + t % s;
  }
  for (int64_t i = 0; i < b; ++i) {
    tables[i] = i * kv_heads; // sequence i's first row of [b * kv_heads]
  }
  const auto groups = kv_of_head.defined() ? kv_of_head.contiguous()
                                            : torch::Tensor();
  for (int64_t h = 0; h < heads; ++h) {
    kv[h] = groups.defined() ? groups.data_ptr<int64_t>()[h] : h;
  }
  detail::PagedAttentionShape shape{tokens, heads, kv_heads, hd, capacity, 1};
  shape.slot_stride = hd;
  shape.head_stride = capacity * hd;
  shape.key_mask_columns = key_mask.size(1);
  const auto mask = key_mask.contiguous();
  // [b, heads, s, hd] -> [b * s, heads, hd]
  const auto context = pool_attention(
      q.transpose(1, 2), cache.k, cache.v, kv.data(), seq.data(), pos.data(),
      tables.data(), shape, mask.data_ptr<bool>());
  return context.view({b, s, heads * hd}).to(q.scalar_type());
}

// act(up) (act(gate) * up for a gated MLP's [gate; up] halves) through
// detail::activation_rows, or an undefined tensor where it does not apply:
// gradients recorded, the exact GELU (LibTorch's erf is faster than
// libmvec's erfc here), a dtype other than float32 and bfloat16, or
// LibTorch alone (TORCHTP_KERNELS=library).
torch::Tensor kernel_activation(
    const torch::Tensor& up, Activation activation, bool gated) {
  const auto dtype = up.scalar_type();
  const auto& choice = detail::kernel_choice();
  if (activation == Activation::gelu || !choice.hand_kernels ||
      (dtype != torch::kFloat && dtype != torch::kBFloat16) ||
      (torch::GradMode::is_enabled() && up.requires_grad()) ||
      up.dim() == 0 || up.size(-1) == 0 || (gated && up.size(-1) % 2 != 0)) {
    return {};
  }
  const auto x = up.contiguous();
  const int64_t width = x.size(-1), n = gated ? width / 2 : width;
  const int64_t rows = x.numel() / width;
  auto shape = x.sizes().vec();
  shape.back() = n;
  auto y = torch::empty(shape, x.options());
  const auto act = activation == Activation::silu
      ? detail::ActivationKernel::silu
      : detail::ActivationKernel::gelu_tanh;
  if (dtype == torch::kFloat) {
    const float* p = x.data_ptr<float>();
    detail::activation_rows(
        choice.isa, act, p, gated ? p + n : nullptr, width,
        y.data_ptr<float>(), rows, n);
  } else {
    const auto* p = reinterpret_cast<const uint16_t*>(x.data_ptr());
    detail::activation_rows(
        choice.isa, act, p, gated ? p + n : nullptr, width,
        reinterpret_cast<uint16_t*>(y.data_ptr()), rows, n);
  }
  return y;
}

} // namespace

// ---------------------------------------------------------------------------
// ParallelMLP

ParallelMLPImpl::ParallelMLPImpl(ParallelMLPOptions options_)
    : options(std::move(options_)) {
  reset();
}

void ParallelMLPImpl::reset() {
  const bool sp = options.sequence_parallel();
  fc1 = register_module(
      "fc1",
      ColumnParallelLinear(detail::with_shared_options(
          ColumnParallelLinearOptions(
              options.d_model(),
              (options.gated() ? 2 : 1) * options.ffn_hidden())
              .bias(options.bias())
              .segments(options.gated() ? 2 : 1)
              .gather_output(false),
          options)));
  fc2 = register_module(
      "fc2",
      RowParallelLinear(detail::with_shared_options(
          RowParallelLinearOptions(options.ffn_hidden(), options.d_model())
              .bias(options.bias())
              .input_is_parallel(true)
              .reduce_output(!sp),
          options)));
}

torch::Tensor ParallelMLPImpl::down(const torch::Tensor& up) {
  if (auto y = kernel_activation(up, options.activation(), options.gated());
      y.defined()) {
    return fc2(y);
  }
  auto act = [&](const torch::Tensor& x) {
    switch (options.activation()) {
      case Activation::gelu:
        return torch::gelu(x);
      case Activation::gelu_tanh:
        return torch::gelu(x, "tanh");
      case Activation::silu:
        return torch::silu(x);
    }
    TORCH_INTERNAL_ASSERT(false, "unknown activation");
    return x;
  };
  if (!options.gated()) {
    return fc2(act(up));
  }
  // This rank's [gate; up] halves (fc1's two segments).
  const auto halves = up.chunk(2, -1);
  return fc2(act(halves[0]) * halves[1]);
}

torch::Tensor ParallelMLPImpl::forward(
    const torch::Tensor& x, int64_t seq_len) {
  if (!options.sequence_parallel()) {
    return down(fc1(x));
  }
  const auto& group = fc1->shard_group();
  auto seq =
      detail::sequence_partition_of(x, seq_len, group, kMLP, options.uneven());
  auto up = detail::gather_sequence_and_linear(
      x, fc1->weight, fc1->bias, group, seq, /*dim=*/1, fc1->weight_scale);
  return reduce_to_shard(down(up), fc2, seq);
}

torch::Tensor ParallelMLPImpl::forward_replicated(const torch::Tensor& x) {
  auto y = down(fc1(x));
  return options.sequence_parallel() ? reduce_whole(y, fc2) : y;
}

void ParallelMLPImpl::pretty_print(std::ostream& stream) const {
  stream << "torchtp::ParallelMLP(d_model=" << options.d_model()
         << ", ffn_hidden=" << options.ffn_hidden()
         << (options.gated() ? ", gated" : "")
         << (options.sequence_parallel() ? ", sequence_parallel" : "") << ")";
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
  const int64_t kv_heads =
      options.num_kv_heads() > 0 ? options.num_kv_heads() : heads;
  TORCHTP_CHECK(
      heads > 0 && d > 0 && options.num_kv_heads() >= 0 &&
          options.head_dim() >= 0,
      kAttention, group,
      "d_model (", d, ") and num_heads (", heads,
      ") must be positive, num_kv_heads (", options.num_kv_heads(),
      ") and head_dim (", options.head_dim(), ") not negative");
  TORCHTP_CHECK(
      options.head_dim() > 0 || d % heads == 0, kAttention, group, "d_model (",
      d, ") is not divisible by num_heads (", heads,
      "); give head_dim to use another width");
  TORCHTP_CHECK(
      heads % kv_heads == 0, kAttention, group, "num_heads (", heads,
      ") is not a multiple of num_kv_heads (", kv_heads,
      "): every key/value head must serve the same number of query heads");
  head_dim_ = options.head_dim() > 0 ? options.head_dim() : d / heads;
  const int64_t hd = head_dim_;
  // Checked here, before the projections, so the message speaks of heads.
  const Partition q_heads(
      heads, group.size(), group.rank(),
      std::string(kAttention) + ": num_heads", options.uneven());
  local_heads_ = q_heads.local_size();
  const int64_t group_size = heads / kv_heads;
  const auto [kv_first, kv_last] = kv_heads_read(
      q_heads.local_offset(), q_heads.local_offset() + local_heads_,
      group_size);
  local_kv_heads_ = kv_last - kv_first;
  kv_of_head_ = torch::Tensor();
  if (local_kv_heads_ != local_heads_) {
    kv_of_head_ = (torch::arange(local_heads_, torch::kLong) +
                   q_heads.local_offset())
                      .div(group_size, "floor") -
                  kv_first;
  }
  inverse_frequencies_ = options.rotary().has_value()
                             ? rotary_inverse_frequencies(hd, *options.rotary())
                             : torch::Tensor();
  rng_ = resolve_rng(options.rng(), group);
  const bool sp = options.sequence_parallel();
  auto qkv_options = ColumnParallelLinearOptions(d, (heads + 2 * kv_heads) * hd)
                         .bias(options.qkv_bias().value_or(options.bias()))
                         .segments(3)
                         .split_unit(hd);
  if (kv_heads != heads) {
    qkv_options.kv_heads(kv_heads);
  }
  qkv = register_module(
      "qkv",
      ColumnParallelLinear(detail::with_shared_options(qkv_options, options)));
  proj = register_module(
      "proj", RowParallelLinear(detail::with_shared_options(
                  RowParallelLinearOptions(heads * hd, d)
                      .bias(options.proj_bias().value_or(options.bias()))
                      .input_is_parallel(true)
                      .split_unit(hd)
                      .reduce_output(!sp),
                  options)));
}

void ParallelSelfAttentionImpl::check_input(const torch::Tensor& x) const {
  TORCHTP_CHECK(
      x.dim() == 3 && x.size(2) == options.d_model(), kAttention,
      qkv->shard_group(), "expected input [batch, seq, ", options.d_model(),
      "] but got ", x.sizes());
}

std::array<torch::Tensor, 3> ParallelSelfAttentionImpl::split_heads(
    const torch::Tensor& projected, const torch::Tensor& positions) {
  const int64_t b = projected.size(0), s = projected.size(1);
  const int64_t hd = head_dim_;
  // [b, s, (lq + 2 lkv) hd] -> [b, lq, s, hd], 2 x [b, lkv, s, hd]
  auto heads = [&](int64_t first, int64_t n) {
    return projected.narrow(2, first * hd, n * hd)
        .view({b, s, n, hd})
        .permute({0, 2, 1, 3});
  };
  auto q = heads(0, local_heads_);
  auto k = heads(local_heads_, local_kv_heads_);
  auto v = heads(local_heads_ + local_kv_heads_, local_kv_heads_);
  if (inverse_frequencies_.defined()) {
    q = apply_rotary(q, positions, inverse_frequencies_);
    k = apply_rotary(k, positions, inverse_frequencies_);
  }
  return {q, k, v};
}

torch::Tensor ParallelSelfAttentionImpl::attend(
    const torch::Tensor& q,
    const torch::Tensor& k,
    const torch::Tensor& v,
    const torch::Tensor& allowed,
    bool with_dropout) {
  const int64_t b = q.size(0), s = q.size(2), hd = q.size(3);
  // Grouped-query attention: each query head reads its key/value head.
  const auto keys = kv_of_head_.defined() ? k.index_select(1, kv_of_head_) : k;
  const auto values =
      kv_of_head_.defined() ? v.index_select(1, kv_of_head_) : v;
  auto scores =
      detail::matmul(q, keys.transpose(-2, -1)) / std::sqrt(double(hd));
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
  auto context = detail::matmul(probs, values) // [b, lh, s, hd]
                     .permute({0, 2, 1, 3}) // [b, s, lh, hd]
                     .reshape({b, s, local_heads_ * hd});
  return proj(context);
}

torch::Tensor ParallelSelfAttentionImpl::forward(
    const torch::Tensor& x, int64_t seq_len) {
  check_input(x);
  c10::optional<Partition> seq;
  torch::Tensor projected;
  if (options.sequence_parallel()) {
    const auto& group = qkv->shard_group();
    seq = detail::sequence_partition_of(
        x, seq_len, group, kAttention, options.uneven());
    projected = detail::gather_sequence_and_linear(
        x, qkv->forward_weight(), qkv->forward_bias(), group, *seq,
        /*dim=*/1, qkv->weight_scale);
  } else {
    projected = qkv(x);
  }
  const auto positions = inverse_frequencies_.defined()
                             ? torch::arange(projected.size(1), torch::kLong)
                             : torch::Tensor();
  auto [q, k, v] = split_heads(projected, positions);
  torch::Tensor allowed;
  if (options.causal()) {
    const int64_t s = projected.size(1);
    allowed = torch::ones({s, s}, torch::kBool).tril();
  }
  auto y = attend(q, k, v, allowed, /*with_dropout=*/true);
  return seq ? reduce_to_shard(y, proj, *seq) : y;
}

torch::Tensor ParallelSelfAttentionImpl::forward_cached(
    const torch::Tensor& x,
    KVCache& cache,
    const torch::Tensor& key_mask,
    const torch::Tensor& positions) {
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
  torch::Tensor rotary_positions;
  if (inverse_frequencies_.defined()) {
    rotary_positions = positions.defined()
                           ? positions
                           : torch::arange(past, total, torch::kLong);
    TORCHTP_CHECK(
        rotary_positions.scalar_type() == torch::kLong &&
            (rotary_positions.sizes() == torch::IntArrayRef({b, s}) ||
             rotary_positions.sizes() == torch::IntArrayRef({s})),
        kAttention, qkv->shard_group(), "expected int64 positions [", b, ", ",
        s, "] but got ", rotary_positions.sizes(), " ",
        rotary_positions.scalar_type());
  }
  auto [q, k, v] = split_heads(qkv(x), rotary_positions);
  if (!cache.k.defined()) {
    TORCHTP_CHECK(
        past == 0, kAttention, qkv->shard_group(), "the cache claims ", past,
        " positions but holds no tensors");
    const std::vector<int64_t> shape{
        b, local_kv_heads_, cache.capacity, k.size(3)};
    const auto options =
        k.options().dtype(cache.dtype.value_or(k.scalar_type()));
    cache.k = empty_cache_tensor(shape, options, qkv->shard_group());
    cache.v = empty_cache_tensor(shape, options, qkv->shard_group());
  }
  TORCHTP_CHECK(
      cache.k.size(0) == b, kAttention, qkv->shard_group(),
      "the cache was filled "
      "for a batch of ",
      cache.k.size(0), ", not ", b);
  cache.k.narrow(2, past, s).copy_(k);
  cache.v.narrow(2, past, s).copy_(v);
  cache.length = total;
  if (auto context = kernel_attention(q, cache, key_mask, kv_of_head_);
      context.defined()) {
    auto y = proj(context);
    return options.sequence_parallel() ? reduce_whole(y, proj) : y;
  }
  // New position i (slot past + i) sees the real slots up to its own, and
  // always itself, so that a padding row stays finite.
  auto slot = torch::arange(total, torch::kLong);
  auto query_slot = torch::arange(past, total, torch::kLong).unsqueeze(1);
  auto causal = slot.unsqueeze(0) <= query_slot;          // [s, total]
  auto self = slot.unsqueeze(0) == query_slot;            // [s, total]
  auto allowed = causal & (key_mask.unsqueeze(1) | self); // [b, s, total]
  // Keys and values as stored (a bfloat16 cache beside float32 queries
  // widened: the rounding the kernel sees too).
  auto y = attend(
      q, cache.k.narrow(2, 0, total).to(q.scalar_type()),
      cache.v.narrow(2, 0, total).to(q.scalar_type()), allowed.unsqueeze(1),
      /*with_dropout=*/false);
  // Sequence parallelism leaves proj's reduction to this block.
  return options.sequence_parallel() ? reduce_whole(y, proj) : y;
}

KVBlocks::Layer ParallelSelfAttentionImpl::make_kv_blocks(
    int64_t num_blocks, int64_t block_size, torch::Dtype dtype) const {
  TORCHTP_CHECK(
      num_blocks > 0 && block_size > 0, kAttention, qkv->shard_group(),
      "a key/value pool needs blocks and positions per block, got ",
      num_blocks, " blocks of ", block_size);
  auto k = torch::zeros(
      {num_blocks, block_size, local_kv_heads_, head_dim_}, dtype);
  return {k, torch::zeros_like(k)};
}

torch::Tensor ParallelSelfAttentionImpl::forward_paged(
    const torch::Tensor& x,
    KVBlocks::Layer& cache,
    const PagedBatch& batch) {
  check_input(x);
  const auto& group = qkv->shard_group();
  const int64_t t = x.size(1), hd = head_dim_;
  TORCHTP_CHECK(
      x.size(0) == 1 && batch.positions.sizes() == torch::IntArrayRef({t}) &&
          batch.slots.sizes() == torch::IntArrayRef({t}) &&
          batch.token_seq.sizes() == torch::IntArrayRef({t}) &&
          batch.block_tables.dim() == 2,
      kAttention, group, "expected input [1, tokens, d_model] and positions, ",
      "slots and token_seq [tokens] (", t, " tokens) but got input ",
      x.sizes(), ", positions ", batch.positions.sizes(), ", slots ",
      batch.slots.sizes(), ", token_seq ", batch.token_seq.sizes());
  TORCHTP_CHECK(
      cache.k.defined() && cache.k.dim() == 4 &&
          cache.k.size(2) == local_kv_heads_ && cache.k.size(3) == hd,
      kAttention, group, "the key/value pool was not made for this layer (",
      local_kv_heads_, " heads of ", hd, " on this rank)");
  const int64_t block_size = cache.k.size(1);
  const int64_t pool_slots = cache.k.size(0) * block_size;
  auto [q, k, v] = split_heads(
      qkv(x),
      inverse_frequencies_.defined() ? batch.positions.unsqueeze(0)
                                     : torch::Tensor());
  const auto dtype = cache.k.scalar_type();
  // [1, heads, T, hd] -> [T, heads, hd]
  auto rows = [&](const torch::Tensor& heads) {
    return heads.squeeze(0).transpose(0, 1).to(dtype).contiguous();
  };
  auto k_slots = cache.k.view({pool_slots, local_kv_heads_, hd});
  auto v_slots = cache.v.view({pool_slots, local_kv_heads_, hd});
  k_slots.index_copy_(0, batch.slots, rows(k));
  v_slots.index_copy_(0, batch.slots, rows(v));
  TORCHTP_CHECK(
      dtype == torch::kFloat || dtype == torch::kDouble ||
          dtype == torch::kBFloat16,
      kAttention, group,
      "the key/value pool holds float32, float64 or bfloat16, not ", dtype);
  const auto kv_of_head = kv_of_head_.defined()
                              ? kv_of_head_
                              : torch::arange(local_heads_, torch::kLong);
  const auto tables = batch.block_tables.contiguous();
  const auto seq = batch.token_seq.contiguous();
  const auto positions = batch.positions.contiguous();
  const detail::PagedAttentionShape shape{
      t, local_heads_, local_kv_heads_, hd, block_size, tables.size(1)};
  const auto context = pool_attention(
      q.squeeze(0).transpose(0, 1), k_slots, v_slots,
      kv_of_head.data_ptr<int64_t>(),
      seq.data_ptr<int64_t>(), positions.data_ptr<int64_t>(),
      tables.data_ptr<int64_t>(), shape);
  auto y = proj(context.view({1, t, local_heads_ * hd}).to(x.scalar_type()));
  // Sequence parallelism leaves proj's reduction to this block.
  return options.sequence_parallel() ? reduce_whole(y, proj) : y;
}

void ParallelSelfAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "torchtp::ParallelSelfAttention(d_model=" << options.d_model()
         << ", num_heads=" << options.num_heads() << " (" << local_heads_
         << " on this rank)";
  if (options.num_kv_heads() > 0 &&
      options.num_kv_heads() != options.num_heads()) {
    stream << ", num_kv_heads=" << options.num_kv_heads() << " ("
           << local_kv_heads_ << " on this rank)";
  }
  stream << ", head_dim=" << head_dim_
         << (inverse_frequencies_.defined() ? ", rotary" : "")
         << ", causal=" << std::boolalpha << options.causal()
         << (options.sequence_parallel() ? ", sequence_parallel" : "") << ")";
}

// ---------------------------------------------------------------------------
// TransformerLayer

TransformerLayerImpl::TransformerLayerImpl(TransformerLayerOptions options_)
    : options(std::move(options_)) {
  reset();
}

void TransformerLayerImpl::reset() {
  group_ = detail::group_or_default(options.group());
  const Group& group = *group_;
  rng_ = resolve_rng(options.rng(), group);
  const int64_t d = options.d_model();
  const int64_t ffn = options.ffn_hidden() > 0 ? options.ffn_hidden() : 4 * d;
  auto ln = [&] {
    return Norm(NormOptions(d)
                    .type(options.norm())
                    .eps(options.layer_norm_eps())
                    .bias(options.norm_bias())
                    .dtype(options.dtype()));
  };
  ln1 = register_module("ln1", ln());
  attention = register_module(
      "attention", ParallelSelfAttention(detail::with_shared_options(
                       ParallelSelfAttentionOptions(d, options.num_heads())
                           .num_kv_heads(options.num_kv_heads())
                           .head_dim(options.head_dim())
                           .causal(options.causal())
                           .bias(options.bias())
                           .qkv_bias(options.qkv_bias())
                           .proj_bias(options.proj_bias())
                           .rotary(options.rotary())
                           .attention_dropout(options.attention_dropout())
                           .rng(rng_),
                       options)));
  ln2 = register_module("ln2", ln());
  mlp = register_module(
      "mlp", ParallelMLP(detail::with_shared_options(
                 ParallelMLPOptions(d, ffn)
                     .bias(options.bias())
                     .activation(options.activation())
                     .gated(options.gated_mlp()),
                 options)));
}

torch::Tensor TransformerLayerImpl::forward_cached(
    const torch::Tensor& x,
    KVCache& cache,
    const torch::Tensor& key_mask,
    const torch::Tensor& positions) {
  auto h = x + attention->forward_cached(ln1(x), cache, key_mask, positions);
  return h + mlp->forward_replicated(ln2(h));
}

torch::Tensor TransformerLayerImpl::forward_paged(
    const torch::Tensor& x,
    KVBlocks::Layer& cache,
    const PagedBatch& batch) {
  auto h = x + attention->forward_paged(ln1(x), cache, batch);
  return h + mlp->forward_replicated(ln2(h));
}

Partition TransformerLayerImpl::sequence_partition(int64_t seq_len) const {
  return detail::sequence_partition(seq_len, *group_, kLayer, options.uneven());
}

torch::Tensor TransformerLayerImpl::forward(
    const torch::Tensor& x, int64_t seq_len) {
  TORCHTP_CHECK(
      x.defined() && x.dim() == 3 && x.size(2) == options.d_model(), kLayer,
      *group_, "expected input [batch, seq, ", options.d_model(), "] but got ",
      x.defined() ? c10::str(x.sizes()) : "undefined");
  if (options.sequence_parallel()) {
    // Checked (and the length resolved) before any collective.
    seq_len = detail::sequence_partition_of(
                  x, seq_len, *group_, kLayer, options.uneven())
                  .full_size();
  }
  if (!options.recompute()) {
    return forward_once(x, seq_len);
  }
  // The graph holds the function until backward: keep the layer alive with
  // it (a layer made outside a shared_ptr must outlive backward itself).
  auto self = weak_from_this().lock();
  return recompute(
      [this, self, seq_len](const torch::Tensor& input) {
        return forward_once(input, seq_len);
      },
      x, parameters(), rng_);
}

torch::Tensor TransformerLayerImpl::forward_once(
    const torch::Tensor& x, int64_t seq_len) {
  const double p = options.hidden_dropout();
  const bool training = is_training();
  if (!options.sequence_parallel()) {
    auto h = x + dropout(attention(ln1(x)), p, training, rng_->replicated());
    return h + dropout(mlp(ln2(h)), p, training, rng_->replicated());
  }
  // Every rank holds different positions: its masks come from its own
  // stream.
  auto& stream = rng_->sharded();
  auto a = attention(detail::norm_on_shard(*ln1, x, *group_), seq_len);
  auto h = x + dropout(a, p, training, stream);
  auto m = mlp(detail::norm_on_shard(*ln2, h, *group_), seq_len);
  return h + dropout(m, p, training, stream);
}

} // namespace torchtp
