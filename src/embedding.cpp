#include "torchtp/embedding.h"

#include "detail/check.h"
#include "detail/dtype.h"
#include "detail/options.h"
#include "detail/quantize_parameter.h"
#include "detail/shard_init.h"
#include "torchtp/mappings.h"

#include <torch/nn/functional/embedding.h>
#include <torch/nn/init.h>

namespace torchtp {

namespace {
constexpr const char* kEmbedding = "torchtp::VocabParallelEmbedding";
} // namespace

VocabParallelEmbeddingImpl::VocabParallelEmbeddingImpl(
    VocabParallelEmbeddingOptions options_)
    : options(std::move(options_)) {
  reset();
}

void VocabParallelEmbeddingImpl::reset() {
  group_ = detail::group_or_default(options.group());
  TORCHTP_CHECK(
      options.num_embeddings() > 0 && options.embedding_dim() > 0, kEmbedding,
      *group_, "num_embeddings and embedding_dim must be positive, got ",
      options.num_embeddings(), " and ", options.embedding_dim());
  partition_ = Partition(
      options.num_embeddings(), group_->size(), group_->rank(),
      std::string(kEmbedding) + ": num_embeddings", options.uneven());
  const auto dtype = detail::dtype_or_default(options.dtype());
  weight = register_parameter(
      "weight",
      torch::empty({partition_->local_size(), options.embedding_dim()}, dtype));
  reset_parameters();  detail::keep_int8_after_reset(*this, weight, weight_scale);
}

void VocabParallelEmbeddingImpl::reset_parameters() {
  // torch::nn::Embedding's draw, in float32 for reduced-precision tables,
  // this rank's rows only. normal_ turns its uniforms into normals 16 at a
  // time and redraws the last 16 of a size that is not a multiple of 16, so
  // the full draw's values need blocks of a multiple of 16 elements.
  detail::draw_shard(
      weight, {options.num_embeddings(), options.embedding_dim()},
      shard_spec("weight"), *group_,
      detail::compute_dtype(weight.scalar_type()), /*element_multiple=*/16,
      [](torch::Tensor& block) { torch::nn::init::normal_(block); });
}

void VocabParallelEmbeddingImpl::load_full_weights(const torch::Tensor& full) {
  copy_shard_of(
      weight, full, shard_spec("weight"), *group_,
      std::string(kEmbedding) + "::load_full_weights", "table");
}

torch::Tensor VocabParallelEmbeddingImpl::forward(const torch::Tensor& ids) {
  TORCHTP_CHECK(
      ids.defined() && (ids.scalar_type() == torch::kLong ||
                        ids.scalar_type() == torch::kInt),
      kEmbedding, *group_, "expected integer ids (Long or Int), got ",
      ids.defined() ? c10::toString(ids.scalar_type()) : "undefined",
      " of shape ", ids.defined() ? c10::str(ids.sizes()) : "[]");
  if (ids.numel() > 0) {
    const auto lo = ids.min().item<int64_t>();
    const auto hi = ids.max().item<int64_t>();
    TORCHTP_CHECK(
        lo >= 0 && hi < options.num_embeddings(), kEmbedding, *group_,
        "ids must be in [0, ", options.num_embeddings(), "), got values in [",
        lo, ", ", hi, "]");
  }
  if (group_->size() == 1) {
    return lookup(ids);
  }
  // Ids this rank does not own look up row 0 and are zeroed; the sum over
  // ranks then holds exactly one real row per id.
  auto outside = (ids < vocab_start_index()) | (ids >= vocab_end_index());
  auto local = (ids - vocab_start_index()).masked_fill(outside, 0);
  auto rows = lookup(local);
  rows = rows.masked_fill(outside.unsqueeze(-1), 0);
  return options.reduce_output() ? reduce_from_tp_region(rows, *group_) : rows;
}

torch::Tensor VocabParallelEmbeddingImpl::lookup(const torch::Tensor& local) {
  if (!weight_scale.defined()) {
    return torch::nn::functional::embedding(local, weight);
  }
  // int8 rows widened with their scales.
  const auto flat = local.reshape({-1});
  auto shape = local.sizes().vec();
  shape.push_back(weight.size(1));
  return (weight.index_select(0, flat).to(torch::kFloat) *
          weight_scale.index_select(0, flat).unsqueeze(1))
      .view(shape)
      .to(dense_dtype_);
}

void VocabParallelEmbeddingImpl::quantize_int8() {
  const auto dtype = weight.scalar_type();
  weight_scale = detail::quantize_parameter(
      *this, weight, *group_, /*row_split=*/false, kEmbedding);
  dense_dtype_ = dtype;
}

void VocabParallelEmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "torchtp::VocabParallelEmbedding(num_embeddings="
         << options.num_embeddings() << " (ids [" << vocab_start_index() << ", "
         << vocab_end_index()
         << ") on this rank), embedding_dim=" << options.embedding_dim()
         << (options.uneven() ? ", uneven=true" : "")
         << ", rank=" << group_->rank() << ", world_size=" << group_->size()
         << ")";
}

} // namespace torchtp
