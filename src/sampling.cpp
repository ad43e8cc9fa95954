#include "torchtp/sampling.h"

#include "detail/check.h"
#include "detail/dtype.h"
#include "detail/options.h"
#include "detail/vocab.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

namespace torchtp {
namespace {

constexpr const char* kTopK = "torchtp::vocab_parallel_topk";
constexpr const char* kSample = "torchtp::sample_next_token";
constexpr double kInf = std::numeric_limits<double>::infinity();

// The rows of `logits_shard` as [rows, local] in float32 at least, with the
// padding ids set to -inf, and where this rank's ids start.
struct LocalLogits {
  at::Tensor x;
  int64_t offset;
  /// The full vocabulary, padding included.
  int64_t full;
};

LocalLogits local_logits(
    const at::Tensor& logits_shard,
    int64_t vocab_size,
    const c10::optional<Partition>& vocab_partition,
    const Group& g,
    const char* who) {
  TORCHTP_CHECK(
      logits_shard.defined() && logits_shard.dim() >= 1 &&
          logits_shard.is_floating_point() && logits_shard.size(-1) > 0,
      who, g, "expected floating-point logits [*, V/ws], got ",
      logits_shard.defined() ? c10::str(logits_shard.sizes()) : "none");
  const int64_t local = logits_shard.size(-1);
  const Partition vocab =
      detail::vocab_partition(local, vocab_partition, g, who);
  const int64_t full = vocab.full_size();
  TORCHTP_CHECK(
      vocab_size >= 0 && vocab_size <= full, who, g, "vocab_size (", vocab_size,
      ") must be in [0, ", full, "], the logits' full vocabulary");
  const int64_t offset = vocab.local_offset();
  auto x = logits_shard.reshape({-1, local});
  // Always a copy (the padding is filled in below, not in the caller's
  // logits), in float32 for reduced-precision logits.
  x = x.to(
      detail::compute_dtype(x.scalar_type()), /*non_blocking=*/false,
      /*copy=*/true);
  const int64_t real = vocab_size > 0 ? vocab_size : full;
  const int64_t local_real = std::clamp<int64_t>(real - offset, 0, local);
  if (local_real < local) {
    x.narrow(1, local_real, local - local_real).fill_(-kInf);
  }
  return {x, offset, full};
}

// The k best of [rows, local] `x` whose ids start at `offset`, merged over
// the group: values [rows, k] largest first, ties by id.
TopLogits merged_topk(
    const at::Tensor& x, int64_t offset, int64_t k, const Group& g) {
  const int64_t rows = x.size(0);
  const int64_t kk = std::min(k, x.size(1));
  at::Tensor vals, ids;
  if (kk == 1) {
    // max() returns the first of equal values: the lowest id, as argmax on
    // the full logits does.
    std::tie(vals, ids) = x.max(1, /*keepdim=*/true);
  } else {
    std::tie(vals, ids) = x.topk(kk, 1);
  }
  // Padding (set to -inf) has no id.
  ids = at::where(vals == -kInf, -1, ids + offset);
  if (kk < k) {
    vals = at::cat({vals, at::full({rows, k - kk}, -kInf, vals.options())}, 1);
    ids = at::cat({ids, at::full({rows, k - kk}, -1, ids.options())}, 1);
  }
  if (g.size() > 1) {
    // One collective: ids travel as float64, exact far beyond any
    // vocabulary.
    auto both = at::cat({vals.to(at::kDouble), ids.to(at::kDouble)}, 1);
    auto all = g.all_gather(both, 1).reshape({rows, g.size(), 2, k});
    vals = all.select(2, 0).reshape({rows, -1}).to(x.scalar_type());
    ids = all.select(2, 1).reshape({rows, -1}).to(at::kLong);
  }
  // Ids ascending, then a stable sort by value: equal values stay in id
  // order. Padding (-1) sorts last among the -inf.
  auto by_id = at::where(ids < 0, std::numeric_limits<int64_t>::max(), ids)
                   .argsort(/*dim=*/int64_t{1});
  vals = vals.gather(1, by_id);
  ids = ids.gather(1, by_id);
  auto order = std::get<1>(vals.sort(/*stable=*/true, 1, /*descending=*/true));
  return {
      vals.gather(1, order).narrow(1, 0, k).contiguous(),
      ids.gather(1, order).narrow(1, 0, k).contiguous()};
}

// Index, per row, of the first entry of `cum` past `target` (the inverse of
// a cumulative distribution), at most `last`.
at::Tensor invert(
    const at::Tensor& cum, const at::Tensor& target, int64_t last) {
  return (cum <= target.unsqueeze(1)).sum(1).clamp_max(last);
}

// Draws among candidates `ids` with unnormalised weights `w` [rows, k]
// (largest first), one uniform per row.
at::Tensor draw_among(
    const at::Tensor& ids, const at::Tensor& w, const at::Tensor& u) {
  auto cum = w.cumsum(1);
  auto target = u * cum.select(1, cum.size(1) - 1);
  auto pick = invert(cum, target, w.size(1) - 1);
  return ids.gather(1, pick.unsqueeze(1)).squeeze(1);
}

// Keeps the fewest leading candidates whose probability `p` (largest first)
// reaches `top_p`: a candidate stays while the mass before it is below.
at::Tensor nucleus(const at::Tensor& p, double top_p) {
  auto before = p.cumsum(1) - p;
  auto keep = before < top_p;
  keep.select(1, 0).fill_(true);
  return p * keep;
}

} // namespace

TopLogits vocab_parallel_topk(
    const at::Tensor& logits_shard,
    int64_t k,
    int64_t vocab_size,
    const c10::optional<Group>& group,
    const c10::optional<Partition>& vocab_partition) {
  const Group g = detail::group_or_default(group);
  TORCHTP_CHECK(k >= 1, kTopK, g, "k must be positive, got ", k);
  at::NoGradGuard no_grad;
  auto [x, offset, full] =
      local_logits(logits_shard, vocab_size, vocab_partition, g, kTopK);
  auto top = merged_topk(x, offset, k, g);
  auto lead = logits_shard.sizes().vec();
  lead.back() = k;
  return {top.values.reshape(lead), top.ids.reshape(lead)};
}

at::Tensor sample_next_token(
    const at::Tensor& logits_shard,
    at::Generator generator,
    const SamplingOptions& o) {
  const Group g = detail::group_or_default(o.group());
  TORCHTP_CHECK(
      o.greedy() || o.temperature() > 0, kSample, g,
      "temperature must be positive, got ", o.temperature(),
      " (use greedy(true) for the most likely token)");
  TORCHTP_CHECK(
      o.top_k() >= 0, kSample, g, "top_k must not be negative, got ",
      o.top_k());
  TORCHTP_CHECK(
      o.top_p() > 0 && o.top_p() <= 1, kSample, g,
      "top_p must be in (0, 1], got ", o.top_p());
  at::NoGradGuard no_grad;
  auto [x, offset, full] = local_logits(
      logits_shard, o.vocab_size(), o.vocab_partition(), g, kSample);
  auto lead = logits_shard.sizes().vec();
  lead.pop_back();
  if (o.greedy()) {
    return merged_topk(x, offset, 1, g).ids.reshape(lead);
  }
  // Every rank draws the same numbers: the generators are in one state.
  x = x.to(at::kDouble).div_(o.temperature());
  const int64_t rows = x.size(0);
  auto u = at::rand({rows}, generator, at::kDouble);

  if (o.top_k() > 0) {
    auto top = merged_topk(x, offset, o.top_k(), g);
    auto p = at::softmax(top.values, 1);
    if (o.top_p() < 1) {
      p = nucleus(p, o.top_p());
    }
    return draw_among(top.ids, p, u).reshape(lead);
  }

  // exp(x - max) with the maximum over every rank: the same scale
  // everywhere.
  auto m = std::get<0>(x.max(1, /*keepdim=*/true));
  g.all_reduce(m, ReduceOp::max);
  auto e = (x - m).exp_();

  if (o.top_p() < 1) {
    // The softmax denominator (one value per row), then more and more of
    // the best candidates until they hold top_p of the mass. Every rank sees
    // the same candidates, so all take the same number of turns.
    auto total = e.sum(1);
    g.all_reduce(total);
    for (int64_t k = std::min<int64_t>(64, full);; k = std::min(4 * k, full)) {
      auto top = merged_topk(x, offset, k, g);
      auto p = (top.values - m).exp_() / total.unsqueeze(1);
      const bool enough = (p.sum(1) >= o.top_p()).all().item<bool>();
      if (enough || k == full) {
        return draw_among(top.ids, nucleus(p, o.top_p()), u).reshape(lead);
      }
    }
  }

  // Every token allowed, in id order. From every rank's mass (one value per
  // row each) all ranks find the same owner of the drawn point; the owner
  // finds the token among its ids, the others give -1.
  auto mass = e.sum(1, /*keepdim=*/true);
  auto masses = g.size() > 1 ? g.all_gather(mass, 1) : mass; // [rows, ws]
  auto cum = masses.cumsum(1);
  auto target = u * cum.select(1, g.size() - 1);
  auto last_with_mass =
      (at::arange(g.size(), at::kLong).unsqueeze(0) * (masses > 0)).amax(1);
  auto owner = at::minimum(invert(cum, target, g.size() - 1), last_with_mass);
  auto before = (cum - masses).gather(1, owner.unsqueeze(1)).squeeze(1);
  auto pick = invert(e.cumsum(1), target - before, e.size(1) - 1) + offset;
  auto ids = at::where(owner == g.rank(), pick, -1);
  if (g.size() > 1) {
    g.all_reduce(ids, ReduceOp::max);
  }
  return ids.reshape(lead);
}

} // namespace torchtp
