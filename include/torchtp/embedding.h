#pragma once

#include "torchtp/group.h"
#include "torchtp/partition.h"
#include "torchtp/sharding.h"

#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <ostream>

namespace torchtp {

/// Options of `VocabParallelEmbedding`.
struct VocabParallelEmbeddingOptions {
  VocabParallelEmbeddingOptions(int64_t num_embeddings, int64_t embedding_dim)
      : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {}

  /// Vocabulary size; split over the ranks of the group.
  TORCH_ARG(int64_t, num_embeddings);
  /// Size of each embedding vector (not split).
  TORCH_ARG(int64_t, embedding_dim);
  /// Allow a vocabulary that does not divide by the world size (50257 over
  /// 3 ranks): the first `V % world_size` ranks hold one more id (see
  /// `Partition`). False: such a size raises a `c10::Error`.
  TORCH_ARG(bool, uneven) = false;
  /// All-reduce the looked-up rows in `forward()`. False: `forward()`
  /// returns this rank's partial lookup (its own rows, zero rows for ids it
  /// does not own) for the caller to sum; sequence parallelism
  /// reduce-scatters it along the sequence (Megatron's embedding does the
  /// same).
  TORCH_ARG(bool, reduce_output) = true;
  /// Ranks to split over; default: the group of `init_from_env()`.
  TORCH_ARG(c10::optional<Group>, group) = c10::nullopt;
  /// Parameter dtype; default: torch's default dtype.
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
};

/// An embedding table with its rows (the vocabulary) split over the ranks:
/// rank r holds `weight [V/ws, dim]`, the ids
/// `[vocab_start_index, vocab_end_index)`.
///
/// Input: integer ids of any shape, the same on every rank. Output
/// `[*ids, dim]`, the same on every rank. Forward: each rank looks up the ids
/// it owns, gives zero rows for the others, and all-reduces (sum; left to
/// the caller with `reduce_output(false)`); backward: no communication, each
/// rank's gradient lands in its own rows.
///
/// Initialisation gives this rank its rows of the table
/// `torch::nn::Embedding` would draw (N(0, 1)), bit for bit, drawing the
/// full table in blocks of rows and keeping only its own, and leaves the
/// global generator as the full draw would.
class VocabParallelEmbeddingImpl
    : public torch::nn::Cloneable<VocabParallelEmbeddingImpl>,
      public Sharded {
 public:
  VocabParallelEmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim)
      : VocabParallelEmbeddingImpl(
            VocabParallelEmbeddingOptions(num_embeddings, embedding_dim)) {}
  explicit VocabParallelEmbeddingImpl(VocabParallelEmbeddingOptions options);

  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// ids (kLong or kInt, values in [0, num_embeddings)) -> `[*ids, dim]`.
  torch::Tensor forward(const torch::Tensor& ids);

  /// Copies this rank's rows of a full `[V, dim]` table.
  void load_full_weights(const torch::Tensor& weight);

  /// Replaces the weight by int8 rows with float32 scales (`weight_scale`)
  /// for serving; see quantize_int8 in quantize.h. Collective.
  void quantize_int8();

  /// weight and weight_scale: dim 0.
  ShardSpec shard_spec(const std::string&) const override {
    return {0, 1, options.num_embeddings(), options.uneven()};
  }
  const Group& shard_group() const override {
    return *group_;
  }

  /// First id this rank owns and one past the last.
  int64_t vocab_start_index() const {
    return partition_->local_offset();
  }
  int64_t vocab_end_index() const {
    return partition_->local_offset() + partition_->local_size();
  }
  const Partition& vocab_partition() const {
    return *partition_;
  }

  VocabParallelEmbeddingOptions options;
  /// `[V/ws, dim]`
  torch::Tensor weight;
  /// `[V/ws]` float32 after quantize_int8, else undefined.
  torch::Tensor weight_scale;

 private:
  c10::optional<Group> group_;
  c10::optional<Partition> partition_;
  // This rank's rows of `local` ids (int8 rows widened).
  torch::Tensor lookup(const torch::Tensor& local);
  // The dtype rows are looked up in once the weight is int8.
  torch::Dtype dense_dtype_ = torch::kFloat;
};
TORCH_MODULE(VocabParallelEmbedding);

} // namespace torchtp
