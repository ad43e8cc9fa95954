#include "torchtp/gpt.h"

#include "detail/check.h"
#include "detail/dtype.h"
#include "detail/fused_linear.h"
#include "detail/options.h"
#include "detail/sequence_parallel.h"
#include "torchtp/init.h"
#include "torchtp/mappings.h"

#include <algorithm>

namespace torchtp {
namespace {
constexpr const char* kGPT = "torchtp::GPT";

// The dtype a cache or pool stores keys and values in: `asked`, or the
// model's (`weights`: float32 for an int8 model, whose activations are).
torch::Dtype kv_dtype_of(
    c10::optional<torch::Dtype> asked, torch::Dtype weights, const Group& g) {
  if (!asked) {
    return weights;
  }
  TORCHTP_CHECK(
      *asked == torch::kFloat || *asked == torch::kBFloat16 ||
          *asked == torch::kDouble,
      kGPT, g, "keys and values are stored in float32, bfloat16 or float64, ",
      "not ", *asked);
  return *asked;
}
} // namespace

GPTImpl::GPTImpl(GPTOptions options_) : options(std::move(options_)) {
  reset();
}

void GPTImpl::reset() {
  group_ = detail::group_or_default(options.group());
  TORCHTP_CHECK(
      options.vocab_size() > 0 && options.max_seq_len() > 0 &&
          options.num_layers() >= 0 && options.vocab_pad_multiple() > 0,
      kGPT, *group_,
      "vocab_size, max_seq_len and vocab_pad_multiple must be positive");
  const int64_t m = options.vocab_pad_multiple();
  padded_vocab_ = (options.vocab_size() + m - 1) / m * m;
  TORCHTP_CHECK(
      options.uneven() || padded_vocab_ % group_->size() == 0, kGPT, *group_,
      "the padded vocabulary (", padded_vocab_, " = vocab_size ",
      options.vocab_size(), " rounded up to vocab_pad_multiple ", m,
      ") is not divisible by the tensor-parallel size (", group_->size(),
      "); choose a vocab_pad_multiple divisible by it, or uneven(true)");
  rng_ = std::make_shared<RngTracker>(options.dropout_seed(), *group_);
  const int64_t d = options.d_model();

  // Construction order is the draw order from the global generator: keep it
  // fixed so every world size draws the same full weights.
  token_embedding = register_module(
      "token_embedding", VocabParallelEmbedding(detail::with_shared_options(
                             VocabParallelEmbeddingOptions(padded_vocab_, d)
                                 .reduce_output(!options.sequence_parallel()),
                             options)));
  if (!options.rotary().has_value()) {
    position_embedding = register_module(
        "position_embedding", torch::nn::Embedding(options.max_seq_len(), d));
  }
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.num_layers(); ++i) {
    layers->push_back(TransformerLayer(detail::with_shared_options(
        TransformerLayerOptions(d, options.num_heads())
            .ffn_hidden(options.ffn_hidden())
            .activation(options.activation())
            .norm(options.norm())
            .norm_bias(options.norm_bias())
            .bias(options.bias())
            .qkv_bias(options.qkv_bias())
            .proj_bias(options.proj_bias())
            .num_kv_heads(options.num_kv_heads())
            .head_dim(options.head_dim())
            .gated_mlp(options.gated_mlp())
            .rotary(options.rotary())
            .layer_norm_eps(options.layer_norm_eps())
            .hidden_dropout(options.hidden_dropout())
            .attention_dropout(options.attention_dropout())
            .rng(rng_)
            .recompute(options.recompute()),
        options)));
  }
  final_norm = register_module(
      "final_norm", Norm(NormOptions(d)
                             .type(options.norm())
                             .eps(options.layer_norm_eps())
                             .bias(options.norm_bias())
                             .dtype(options.dtype())));
  if (!options.tie_embeddings()) {
    lm_head = register_module(
        "lm_head", ColumnParallelLinear(detail::with_shared_options(
                       ColumnParallelLinearOptions(d, padded_vocab_)
                           .bias(false)
                           .gather_output(false),
                       options)));
  }
  if (options.dtype().has_value() && position_embedding) {
    position_embedding->to(*options.dtype());
  }
}

torch::Tensor GPTImpl::forward(const torch::Tensor& ids) {
  TORCHTP_CHECK(
      ids.dim() == 2 && ids.size(1) <= options.max_seq_len(), kGPT, *group_,
      "expected ids [batch, seq <= ", options.max_seq_len(), "] but got ",
      ids.sizes());
  TORCHTP_CHECK(
      ids.numel() == 0 || ids.max().item<int64_t>() < options.vocab_size(),
      kGPT, *group_, "ids must be below vocab_size (", options.vocab_size(),
      "), got ", ids.max().item<int64_t>());
  if (options.sequence_parallel()) {
    return forward_sequence_parallel(ids);
  }
  auto h = token_embedding(ids);
  if (position_embedding) {
    h = h + position_embedding(torch::arange(ids.size(1), torch::kLong));
  }
  h = dropout(h, options.hidden_dropout(), is_training(), rng_->replicated());
  for (const auto& layer : *layers) {
    h = layer->as<TransformerLayerImpl>()->forward(h);
  }
  return output(h);
}

torch::Tensor GPTImpl::forward_sequence_parallel(const torch::Tensor& ids) {
  const int64_t s = ids.size(1);
  // Checked before the first collective, on every rank alike.
  const auto seq =
      detail::sequence_partition(s, *group_, kGPT, options.uneven());
  // The embedding's partial lookups, summed and split in one exchange.
  auto h = detail::reduce_scatter_sequence(token_embedding(ids), *group_, seq);
  if (position_embedding) {
    // Each rank adds its own positions' rows; their gradients are summed.
    auto table =
        copy_to_tp_region(position_embedding->weight.narrow(0, 0, s), *group_);
    h = h + seq.narrow(table, 0);
  }
  h = dropout(h, options.hidden_dropout(), is_training(), rng_->sharded());
  for (const auto& layer : *layers) {
    h = layer->as<TransformerLayerImpl>()->forward(h, s);
  }
  // The output layer's weight (the token table when tied) on the gathered
  // sequence, keeping only this rank's part of it for backward.
  return detail::gather_sequence_and_linear(
      detail::norm_on_shard(*final_norm, h, *group_),
      lm_head ? lm_head->weight : token_embedding->weight, torch::Tensor(),
      *group_, seq, /*dim=*/1,
      lm_head ? lm_head->weight_scale : token_embedding->weight_scale);
}

torch::Tensor GPTImpl::output(const torch::Tensor& h) {
  auto x = final_norm(h);
  if (lm_head) {
    return lm_head(x);
  }
  // What a ColumnParallelLinear without gather does, with the embedding's
  // rows as its output features.
  return detail::copy_to_tp_region_and_linear(
      x, token_embedding->weight, torch::Tensor(), *group_,
      token_embedding->weight_scale);
}

LMCache GPTImpl::make_cache(c10::optional<torch::Dtype> kv_dtype) const {
  return LMCache(
      options.max_seq_len(), options.num_layers(),
      kv_dtype_of(kv_dtype, final_norm->weight.scalar_type(), *group_));
}

torch::Tensor GPTImpl::forward_cached(
    const torch::Tensor& ids,
    LMCache& cache,
    const torch::Tensor& mask,
    bool last_only) {
  TORCHTP_CHECK(
      ids.dim() == 2 && ids.scalar_type() == torch::kLong, kGPT, *group_,
      "expected int64 ids [batch, seq] but got ", ids.sizes(), " ",
      ids.scalar_type());
  const int64_t b = ids.size(0), s = ids.size(1);
  TORCHTP_CHECK(
      static_cast<int64_t>(cache.layers.size()) == options.num_layers() &&
          cache.capacity() > 0,
      kGPT, *group_, "the cache was not made by this model's make_cache()");
  TORCHTP_CHECK(
      cache.length() + s <= cache.capacity(), kGPT, *group_,
      "the context holds ", cache.capacity(), " positions (max_seq_len); ",
      cache.length(), " are used and ", s, " more were given");
  auto real = mask.defined() ? mask : torch::ones({b, s}, torch::kBool);
  TORCHTP_CHECK(
      real.scalar_type() == torch::kBool && real.sizes() == ids.sizes(), kGPT,
      *group_, "expected a bool mask of shape ", ids.sizes(), " but got ",
      real.sizes(), " ", real.scalar_type());
  if (!cache.next_position.defined()) {
    cache.next_position = torch::zeros({b}, torch::kLong);
    cache.key_mask = torch::empty({b, 0}, torch::kBool);
  }
  TORCHTP_CHECK(
      cache.next_position.size(0) == b, kGPT, *group_,
      "the cache holds a batch of ", cache.next_position.size(0), ", not ", b);
  const auto real_ids = ids.masked_select(real);
  TORCHTP_CHECK(
      real_ids.numel() == 0 ||
          real_ids.max().item<int64_t>() < options.vocab_size(),
      kGPT, *group_, "ids must be below vocab_size (", options.vocab_size(),
      ")");
  // Padding takes no position: a sequence's positions count its real tokens.
  auto positions =
      (cache.next_position.unsqueeze(1) + real.cumsum(1) - 1).clamp_min(0);
  cache.next_position = cache.next_position + real.sum(1);
  cache.key_mask = torch::cat({cache.key_mask, real}, 1);
  auto tokens = token_embedding(ids.masked_fill(real.logical_not(), 0));
  if (options.sequence_parallel()) {
    // Built to leave the sum to its caller; here it is over whole sequences.
    tokens = reduce_from_tp_region(tokens, *group_);
  }
  auto h = position_embedding ? tokens + position_embedding(positions) : tokens;
  for (size_t i = 0; i < cache.layers.size(); ++i) {
    h = layers[i]->as<TransformerLayerImpl>()->forward_cached(
        h, cache.layers[i], cache.key_mask, positions);
  }
  return output(last_only ? h.narrow(1, s - 1, 1) : h);
}

KVBlocks GPTImpl::make_kv_blocks(
    int64_t num_blocks,
    int64_t block_size,
    c10::optional<torch::Dtype> kv_dtype) const {
  KVBlocks cache;
  cache.num_blocks = num_blocks;
  cache.block_size = block_size;
  // As `generate`'s cache holds them (read by the attention kernel as
  // stored).
  const auto dtype =
      kv_dtype_of(kv_dtype, final_norm->weight.scalar_type(), *group_);
  for (const auto& layer : *layers) {
    cache.layers.push_back(
        layer->as<TransformerLayerImpl>()->attention->make_kv_blocks(
            num_blocks, block_size, dtype));
  }
  return cache;
}

torch::Tensor GPTImpl::forward_paged(const PagedBatch& b, KVBlocks& cache) {
  const int64_t t = b.ids.defined() ? b.ids.numel() : 0;
  auto is_long = [](const torch::Tensor& x, int64_t dims) {
    return x.defined() && x.dim() == dims && x.scalar_type() == torch::kLong;
  };
  TORCHTP_CHECK(
      is_long(b.ids, 1) && t > 0 && is_long(b.positions, 1) &&
          is_long(b.token_seq, 1) && is_long(b.slots, 1) &&
          is_long(b.block_tables, 2) && is_long(b.logits_rows, 1) &&
          b.positions.numel() == t && b.token_seq.numel() == t &&
          b.slots.numel() == t &&
          b.logits_rows.numel() == b.block_tables.size(0),
      kGPT, *group_,
      "a PagedBatch needs int64 ids, positions, token_seq and slots [T > 0], "
      "block_tables [sequences, max_blocks] and logits_rows [sequences]");
  TORCHTP_CHECK(
      static_cast<int64_t>(cache.layers.size()) == options.num_layers() &&
          cache.block_size > 0,
      kGPT, *group_, "the key/value pool was not made by this model's ",
      "make_kv_blocks()");
  // The attention kernel trusts these indices: check them all once here.
  auto within = [](const torch::Tensor& x, int64_t end) {
    return x.numel() == 0 ||
        (x.min().item<int64_t>() >= 0 && x.max().item<int64_t>() < end);
  };
  const int64_t max_blocks = b.block_tables.size(1);
  TORCHTP_CHECK(
      within(b.ids, options.vocab_size()), kGPT, *group_,
      "ids must be in [0, ", options.vocab_size(), ")");
  TORCHTP_CHECK(
      within(b.positions, std::min(options.max_seq_len(),
                                   max_blocks * cache.block_size)) &&
          within(b.slots, cache.num_blocks * cache.block_size) &&
          within(b.block_tables, cache.num_blocks) &&
          within(b.token_seq, b.block_tables.size(0)) &&
          within(b.logits_rows, t),
      kGPT, *group_, "a PagedBatch index is out of range: positions must be ",
      "below max_seq_len (", options.max_seq_len(), ") and the block table's ",
      "reach (", max_blocks, " blocks of ", cache.block_size, "), slots below ",
      cache.num_blocks * cache.block_size, ", blocks below ",
      cache.num_blocks, ", token_seq below the ", b.block_tables.size(0),
      " sequences, logits_rows below ", t);
  auto ids = b.ids.view({1, t});
  auto h = token_embedding(ids);
  if (options.sequence_parallel()) {
    // Built to leave the sum to its caller; here it is over whole sequences.
    h = reduce_from_tp_region(h, *group_);
  }
  if (position_embedding) {
    h = h + position_embedding(b.positions.view({1, t}));
  }
  for (size_t i = 0; i < cache.layers.size(); ++i) {
    h = layers[i]->as<TransformerLayerImpl>()->forward_paged(
        h, cache.layers[i], b);
  }
  // Only the rows whose logits are wanted reach the output layer.
  return output(h.index_select(1, b.logits_rows)).squeeze(0);
}

torch::Tensor GPTImpl::loss(
    const torch::Tensor& ids,
    const torch::Tensor& targets,
    double label_smoothing) {
  return vocab_parallel_cross_entropy(
      forward(ids), targets,
      VocabParallelCrossEntropyOptions()
          .vocab_size(options.vocab_size())
          .label_smoothing(label_smoothing)
          .group(*group_)
          .vocab_partition(vocab_partition()));
}

torch::Tensor GPTImpl::full_logits(const torch::Tensor& ids) {
  auto full = gather_from_tp_region(forward(ids), *group_, vocab_partition());
  return full.narrow(-1, 0, options.vocab_size());
}

void GPTImpl::pretty_print(std::ostream& stream) const {
  stream << "torchtp::GPT(vocab_size=" << options.vocab_size() << " (padded to "
         << padded_vocab_ << "), max_seq_len=" << options.max_seq_len()
         << ", d_model=" << options.d_model()
         << ", num_heads=" << options.num_heads()
         << (options.num_kv_heads() > 0 &&
                     options.num_kv_heads() != options.num_heads()
                 ? ", num_kv_heads=" + std::to_string(options.num_kv_heads())
                 : "")
         << ", num_layers=" << options.num_layers()
         << (options.norm() == NormType::rms_norm ? ", RMSNorm" : "")
         << (options.rotary().has_value() ? ", rotary" : "")
         << (options.gated_mlp() ? ", gated MLP" : "")
         << (options.tie_embeddings() ? ", tied embeddings" : "")
         << (options.uneven() ? ", uneven splits" : "")
         << (options.sequence_parallel() ? ", sequence_parallel" : "")
         << (options.recompute() ? ", recompute" : "")
         << ", world_size=" << group_->size() << ")";
}

} // namespace torchtp
