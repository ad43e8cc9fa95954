#include "detail/sequence_parallel.h"

#include "detail/check.h"
#include "torchtp/mappings.h"

namespace torchtp {

namespace detail {

Partition sequence_partition(
    int64_t seq_len, const Group& group, const std::string& who, bool uneven) {
  return Partition(
      seq_len, group.size(), group.rank(),
      who +
          ": sequence_parallel splits the sequence (dim 1) over the ranks, "
          "but its length",
      uneven);
}

Partition sequence_partition_of(
    const torch::Tensor& x,
    int64_t seq_len,
    const Group& group,
    const std::string& who,
    bool uneven) {
  TORCHTP_CHECK(
      x.dim() == 3, who, group,
      "sequence_parallel: expected this rank's part of the sequence, "
      "[batch, local_seq, d_model], but got ",
      x.sizes());
  TORCHTP_CHECK(
      seq_len >= -1, who, group, "seq_len must be -1 or a length, got ",
      seq_len);
  // With uneven parts a rank cannot tell the whole length from its own
  // part, and ranks that guessed differently would exchange different
  // sizes.
  TORCHTP_CHECK(
      seq_len != -1 || !uneven || group.size() == 1, who, group,
      "sequence_parallel with uneven(true): pass the full sequence length "
      "(forward(x, seq_len)); this rank holds ",
      x.size(1), " positions");
  auto seq = sequence_partition(
      seq_len == -1 ? x.size(1) * group.size() : seq_len, group, who, uneven);
  TORCHTP_CHECK(
      x.size(1) == seq.local_size(), who, group,
      "sequence_parallel: expected this rank's ", seq.local_size(), " of the ",
      seq.full_size(), " positions (input [batch, ", seq.local_size(),
      ", d_model]) but got ", x.sizes());
  return seq;
}

torch::Tensor reduce_scatter_sequence(
    const torch::Tensor& x, const Group& group, const Partition& seq) {
  return reduce_scatter_to_sequence_region(x, group, seq, /*dim=*/1);
}

torch::Tensor norm_on_shard(
    const NormImpl& norm, const torch::Tensor& x, const Group& group) {
  auto shared = [&](const torch::Tensor& t) {
    return t.defined() ? copy_to_tp_region(t, group) : t;
  };
  return norm.forward_with(x, shared(norm.weight), shared(norm.bias));
}

torch::Tensor add_bias_on_shard(
    const torch::Tensor& y, const torch::Tensor& bias, const Group& group) {
  return bias.defined() ? y + copy_to_tp_region(bias, group) : y;
}

} // namespace detail

} // namespace torchtp
