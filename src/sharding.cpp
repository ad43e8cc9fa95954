#include "torchtp/sharding.h"

#include "detail/check.h"

#include <ATen/WrapDimUtils.h>
#include <ATen/ops/cat.h>

#include <algorithm>
#include <utility>

namespace torchtp {
namespace {

// The root is visited by reference: named_modules() could only include it
// when it is held in a shared_ptr, and a model on the stack is common.
template <typename F>
void for_each_sharded(const torch::nn::Module& model, F&& f) {
  if (auto* sharded = dynamic_cast<const Sharded*>(&model)) {
    f(std::string(), model, *sharded);
  }
  for (const auto& item :
       model.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    if (auto* sharded = dynamic_cast<const Sharded*>(item.value().get())) {
      f(item.key(), *item.value(), *sharded);
    }
  }
}

// `dim` of `t` made non-negative, checked to hold `segments` blocks of
// `part.full_size()`.
int64_t split_dim(
    const at::Tensor& t,
    int64_t dim,
    int64_t segments,
    const Partition& part,
    const char* component) {
  const int64_t d = c10::maybe_wrap_dim(dim, t.dim());
  TORCHTP_CHECK(
      t.size(d) == segments * part.full_size(), component,
      detail::RankOf(part.rank(), part.parts()), "expected size ",
      segments * part.full_size(), " along dim ", d, ", got ", t.sizes());
  return d;
}

} // namespace

std::vector<int64_t> full_shape(
    at::IntArrayRef local, const ShardSpec& spec, const Group& group) {
  auto shape = local.vec();
  if (!spec.is_replicated()) {
    // Without a full size the split is even (the layers always give one).
    shape[spec.dim] =
        spec.full_size >= 0 ? spec.full_size : shape[spec.dim] * group.size();
  }
  return shape;
}

std::vector<SegmentRange> shard_ranges(
    const Partition& part, int64_t segments, int64_t rank) {
  TORCH_INTERNAL_ASSERT(segments >= 1, "segments must be positive");
  std::vector<SegmentRange> ranges;
  for (int64_t s = 0; s < segments; ++s) {
    ranges.push_back(
        {s * part.full_size() + part.offset(rank), s * part.size(rank),
         part.size(rank)});
  }
  return ranges;
}

std::pair<int64_t, int64_t> kv_heads_read(
    int64_t q_first, int64_t q_last, int64_t group_size) {
  TORCH_INTERNAL_ASSERT(group_size >= 1 && q_first < q_last);
  return {q_first / group_size, (q_last + group_size - 1) / group_size};
}

std::vector<SegmentRange> shard_ranges(
    const ShardSpec& spec,
    int64_t full_size,
    int64_t parts,
    int64_t rank,
    const std::string& what) {
  TORCH_INTERNAL_ASSERT(!spec.is_replicated() && spec.segments >= 1);
  if (spec.kv_heads == 0) {
    TORCH_INTERNAL_ASSERT(full_size % spec.segments == 0);
    return shard_ranges(
        spec.partition(full_size / spec.segments, parts, rank, what),
        spec.segments, rank);
  }
  const int64_t hd = spec.unit;
  const int64_t q_full = full_size - 2 * spec.kv_heads * hd;
  TORCH_INTERNAL_ASSERT(
      spec.segments == 3 && q_full > 0 && q_full % (spec.kv_heads * hd) == 0,
      what, ": ", full_size, " is not a [Q; K; V] of ", spec.kv_heads,
      " key/value heads of ", hd);
  const Partition q = spec.partition(q_full, parts, rank, what);
  const auto [k_first, k_last] = kv_heads_read(
      q.offset(rank) / hd, (q.offset(rank) + q.size(rank)) / hd,
      q_full / hd / spec.kv_heads);
  const int64_t kv_full = spec.kv_heads * hd, kv_len = (k_last - k_first) * hd;
  return {
      {q.offset(rank), 0, q.size(rank)},
      {q_full + k_first * hd, q.size(rank), kv_len},
      {q_full + kv_full + k_first * hd, q.size(rank) + kv_len, kv_len}};
}

std::vector<SegmentRange> owned_ranges(
    const ShardSpec& spec,
    int64_t full_size,
    int64_t parts,
    int64_t rank,
    const std::string& what) {
  auto ranges = shard_ranges(spec, full_size, parts, rank, what);
  if (spec.kv_heads == 0 || rank == 0) {
    return ranges;
  }
  // Shards hold ascending ranges of each segment: what rank - 1 holds ends
  // where the lower ranks' part of the segment ends.
  const auto lower = shard_ranges(spec, full_size, parts, rank - 1, what);
  for (size_t s = 0; s < ranges.size(); ++s) {
    const int64_t end = lower[s].from + lower[s].length;
    const int64_t skip =
        std::clamp<int64_t>(end - ranges[s].from, 0, ranges[s].length);
    ranges[s] = {ranges[s].from + skip, ranges[s].to + skip, ranges[s].length - skip};
  }
  return ranges;
}

std::vector<SegmentRange> overlap_ranges(
    const Partition& then,
    int64_t rank,
    const Partition& now,
    int64_t segments) {
  TORCHTP_CHECK(
      then.full_size() == now.full_size(), "torchtp::overlap_ranges",
      detail::RankOf(now.rank(), now.parts()), "segments of size ",
      then.full_size(), " and ", now.full_size(), " split different dims");
  // Both shards in the full dim's indices; every pair that overlaps is one
  // copy.
  std::vector<SegmentRange> ranges;
  for (const auto& src : shard_ranges(then, segments, rank)) {
    for (const auto& dst : shard_ranges(now, segments, now.rank())) {
      const int64_t lo = std::max(src.from, dst.from);
      const int64_t hi = std::min(src.from + src.length, dst.from + dst.length);
      if (lo < hi) {
        ranges.push_back(
            {src.to + lo - src.from, dst.to + lo - dst.from, hi - lo});
      }
    }
  }
  return ranges;
}

at::Tensor shard_of(
    const at::Tensor& full,
    int64_t dim,
    int64_t segments,
    const Partition& part) {
  const int64_t d = split_dim(full, dim, segments, part, "torchtp::shard_of");
  const auto ranges = shard_ranges(part, segments, part.rank());
  if (ranges.size() == 1) {
    return full.narrow(d, ranges[0].from, ranges[0].length);
  }
  std::vector<at::Tensor> pieces;
  for (const auto& r : ranges) {
    pieces.push_back(full.narrow(d, r.from, r.length));
  }
  return at::cat(pieces, d);
}

at::Tensor full_from_gathered(
    const at::Tensor& gathered,
    int64_t dim,
    int64_t segments,
    const Partition& part) {
  const int64_t d =
      split_dim(gathered, dim, segments, part, "torchtp::full_from_gathered");
  if (segments == 1) {
    return gathered; // rank-major is block-major with one block
  }
  // Shard r starts at segments * offset(r) in the gathered tensor; each of
  // its ranges goes to its place in the full dim.
  std::vector<std::pair<int64_t, at::Tensor>> pieces; // (full index, piece)
  for (int64_t r = 0; r < part.parts(); ++r) {
    const int64_t start = segments * part.offset(r);
    for (const auto& range : shard_ranges(part, segments, r)) {
      pieces.emplace_back(
          range.from, gathered.narrow(d, start + range.to, range.length));
    }
  }
  std::sort(pieces.begin(), pieces.end(), [](const auto& a, const auto& b) {
    return a.first < b.first;
  });
  std::vector<at::Tensor> ordered;
  for (auto& piece : pieces) {
    ordered.push_back(std::move(piece.second));
  }
  return at::cat(ordered, d);
}

at::Tensor shard_of(
    const at::Tensor& full,
    const ShardSpec& spec,
    const Group& group,
    const std::string& what) {
  if (spec.is_replicated()) {
    return full;
  }
  const int64_t d = spec.dim;
  TORCHTP_CHECK(
      spec.kv_heads > 0 || full.size(d) % spec.segments == 0, what, group,
      "size ", full.size(d), " along dim ", d,
      " is not divisible by segments (", spec.segments, ")");
  std::vector<at::Tensor> pieces;
  for (const auto& r :
       shard_ranges(spec, full.size(d), group.size(), group.rank(), what)) {
    pieces.push_back(full.narrow(d, r.from, r.length));
  }
  return pieces.size() == 1 ? pieces[0] : at::cat(pieces, d);
}

void copy_shard_of(
    at::Tensor& shard,
    const at::Tensor& full,
    const ShardSpec& spec,
    const Group& group,
    const std::string& component,
    const std::string& what) {
  const auto expected = full_shape(shard.sizes(), spec, group);
  TORCHTP_CHECK(
      full.defined() && full.sizes() == at::IntArrayRef(expected), component,
      group, "expected full ", what, " of shape ", at::IntArrayRef(expected),
      " but got ", full.defined() ? c10::str(full.sizes()) : "undefined");
  at::NoGradGuard no_grad;
  shard.copy_(shard_of(full, spec, group, component + ": " + what));
}

std::map<std::string, ShardSpec> shard_specs(const torch::nn::Module& model) {
  std::map<std::string, ShardSpec> specs;
  for (const auto& p : model.named_parameters()) {
    specs[p.key()] = ShardSpec::replicated();
  }
  for_each_sharded(
      model, [&](const std::string& prefix, const torch::nn::Module& m,
                 const Sharded& s) {
        for (const auto& p : m.named_parameters(/*recurse=*/false)) {
          const auto name = prefix.empty() ? p.key() : prefix + "." + p.key();
          specs[name] = s.shard_spec(p.key());
        }
        // quantize_int8's scales split as the layer says.
        for (const auto& b : m.named_buffers(/*recurse=*/false)) {
          const auto name = prefix.empty() ? b.key() : prefix + "." + b.key();
          specs[name] = s.shard_spec(b.key());
        }
      });
  return specs;
}

Group shard_group(const torch::nn::Module& model) {
  c10::optional<Group> group;
  for_each_sharded(
      model, [&](const std::string& prefix, const torch::nn::Module&,
                 const Sharded& s) {
        if (!group.has_value()) {
          group = s.shard_group();
        }
        TORCHTP_CHECK(
            *group == s.shard_group(), "torchtp", *group, "module '", prefix,
            "' is split over another group than the rest of the model");
      });
  return group.has_value() ? *group : default_group();
}

} // namespace torchtp
