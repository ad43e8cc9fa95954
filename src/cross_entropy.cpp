#include "torchtp/cross_entropy.h"

#include "detail/check.h"
#include "detail/dtype.h"
#include "detail/options.h"
#include "detail/vocab.h"
#include "torchtp/partition.h"

#include <torch/autograd.h>

#include <limits>

namespace torchtp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Comm = detail::Communicator;

constexpr const char* kCrossEntropy = "torchtp::vocab_parallel_cross_entropy";

// Per-token loss; the reduction is applied outside with ordinary autograd.
struct VocabParallelCrossEntropy
    : torch::autograd::Function<VocabParallelCrossEntropy> {
  static at::Tensor forward(
      AutogradContext* ctx,
      at::Tensor logits,
      at::Tensor target,
      Group group,
      Partition part,
      int64_t ignore_index,
      double smoothing,
      int64_t vocab_size) {
    const auto in_dtype = logits.scalar_type();
    auto x = logits.to(detail::compute_dtype(in_dtype));
    const int64_t start = part.local_offset();
    const int64_t end = start + part.local_size();
    const int64_t real_vocab = vocab_size > 0 ? vocab_size : part.full_size();

    // Padding entries (ids >= real_vocab) take no part: -inf logits.
    auto local_ids = at::arange(start, end, target.options());
    auto is_padding = local_ids >= real_vocab;
    const bool has_padding = end > real_vocab;
    if (has_padding) {
      x = x.masked_fill(is_padding, -std::numeric_limits<double>::infinity());
    }

    // Numerically stable: subtract the global row maximum.
    auto row_max = std::get<0>(x.max(-1));
    group.all_reduce(row_max, ReduceOp::max);
    auto shifted = x - row_max.unsqueeze(-1);

    auto outside = (target < start) | (target >= end);
    auto local_target = (target - start).masked_fill(outside, 0);
    auto target_logit = shifted.gather(-1, local_target.unsqueeze(-1))
                            .squeeze(-1)
                            .masked_fill(outside, 0);
    group.all_reduce(target_logit);

    auto exp = shifted.exp();
    auto sum_exp = exp.sum(-1);
    group.all_reduce(sum_exp);
    auto log_z = sum_exp.log();
    auto loss = log_z - target_logit;

    if (smoothing > 0) {
      // Uniform part: mean over the real vocabulary of -log p.
      auto real = has_padding ? shifted.masked_fill(is_padding, 0) : shifted;
      auto sum_shifted = real.sum(-1);
      group.all_reduce(sum_shifted);
      auto uniform = log_z - sum_shifted / double(real_vocab);
      loss = (1 - smoothing) * loss + smoothing * uniform;
    }
    auto valid = target != ignore_index;
    loss = loss.masked_fill(valid.logical_not(), 0);

    auto softmax = exp.div_(sum_exp.unsqueeze(-1));
    ctx->save_for_backward({softmax, local_target, outside, valid, is_padding});
    ctx->saved_data["smoothing"] = smoothing;
    ctx->saved_data["real_vocab"] = real_vocab;
    ctx->saved_data["in_dtype"] = static_cast<int64_t>(in_dtype);
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto grad = saved[0].clone(); // softmax
    const auto& local_target = saved[1];
    const auto& outside = saved[2];
    const auto& valid = saved[3];
    const auto& is_padding = saved[4];
    const double smoothing = ctx->saved_data["smoothing"].toDouble();
    const int64_t real_vocab = ctx->saved_data["real_vocab"].toInt();
    const auto in_dtype =
        static_cast<at::ScalarType>(ctx->saved_data["in_dtype"].toInt());

    // d loss / d logit = softmax - (1 - s) one_hot - s / V (over real ids).
    auto hit = outside.logical_not().to(grad.scalar_type()) * (1 - smoothing);
    grad.scatter_add_(-1, local_target.unsqueeze(-1), -hit.unsqueeze(-1));
    if (smoothing > 0) {
      grad.sub_(
          is_padding.logical_not().to(grad.scalar_type()) *
          (smoothing / double(real_vocab)));
    }
    grad.mul_((grads[0] * valid.to(grads[0].scalar_type()))
                  .unsqueeze(-1)
                  .to(grad.scalar_type()));
    return {grad.to(in_dtype), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(),      at::Tensor(), at::Tensor()};
  }
};

} // namespace

at::Tensor vocab_parallel_cross_entropy(
    const at::Tensor& logits_shard,
    const at::Tensor& target,
    const VocabParallelCrossEntropyOptions& options) {
  Group group = detail::group_or_default(options.group());
  TORCHTP_CHECK(
      logits_shard.defined() && logits_shard.dim() >= 1 &&
          logits_shard.is_floating_point(),
      kCrossEntropy, group, "expected floating-point logits [*, V/ws], got ",
      logits_shard.defined() ? c10::str(logits_shard.sizes()) : "none");
  auto lead = logits_shard.sizes().vec();
  lead.pop_back();
  TORCHTP_CHECK(
      target.defined() && target.sizes() == at::IntArrayRef(lead) &&
          (target.scalar_type() == at::kLong ||
           target.scalar_type() == at::kInt),
      kCrossEntropy, group, "expected integer targets of shape ",
      at::IntArrayRef(lead), " (the logits' leading dims) but got ",
      target.defined() ? c10::str(target.sizes()) : "none", " ",
      target.defined() ? c10::toString(target.scalar_type()) : "");
  const double s = options.label_smoothing();
  TORCHTP_CHECK(
      s >= 0 && s <= 1, kCrossEntropy, group,
      "label_smoothing must be in [0, 1], got ", s);
  const Partition vocab = detail::vocab_partition(
      logits_shard.size(-1), options.vocab_partition(), group, kCrossEntropy);
  const int64_t full_vocab = vocab.full_size();
  TORCHTP_CHECK(
      options.vocab_size() >= 0 && options.vocab_size() <= full_vocab,
      kCrossEntropy, group, "vocab_size (", options.vocab_size(),
      ") must be in [0, ", full_vocab, "], the logits' full vocabulary");
  const int64_t real_vocab =
      options.vocab_size() > 0 ? options.vocab_size() : full_vocab;
  auto t = target.to(at::kLong);
  if (t.numel() > 0) {
    auto real = t.masked_select(t != options.ignore_index());
    if (real.numel() > 0) {
      const auto lo = real.min().item<int64_t>();
      const auto hi = real.max().item<int64_t>();
      TORCHTP_CHECK(
          lo >= 0 && hi < real_vocab, kCrossEntropy, group,
          "targets must be in [0, ", real_vocab, ") or ignore_index (",
          options.ignore_index(), "), got values in [", lo, ", ", hi, "]");
    }
  }

  auto loss = VocabParallelCrossEntropy::apply(
      logits_shard, t, group, vocab, options.ignore_index(), s,
      options.vocab_size());
  using R = VocabParallelCrossEntropyOptions::Reduction;
  switch (options.reduction()) {
    case R::none:
      return loss;
    case R::sum:
      return loss.sum();
    case R::mean:
      return loss.sum() / (t != options.ignore_index()).sum().to(loss.dtype());
  }
  TORCH_INTERNAL_ASSERT(false, "unknown reduction");
}

} // namespace torchtp
