#include "torchtp/sharding.h"

#include "torchtp/detail/check.h"
#include "torchtp/detail/shard_init.h"

#include <ATen/WrapDimUtils.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/accumulate.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <numeric>
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
      full.size(d) % spec.segments == 0, what, group, "size ", full.size(d),
      " along dim ", d, " is not divisible by segments (", spec.segments, ")");
  return shard_of(
      full, d, spec.segments,
      spec.partition(
          full.size(d) / spec.segments, group.size(), group.rank(), what));
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

namespace detail {
namespace {
// 4 MiB: about 1 ms of drawing, so the calls cost nothing next to the
// draws, and small next to any layer worth splitting.
std::atomic<int64_t> block_bytes{int64_t{4} << 20};

// A scratch tensor in memory mapped for it alone, unmapped when the tensor
// goes. From malloc, a freed block of this size stays resident as a hole in
// the heap (measured: about one block per transformer layer, ~140 MiB over
// the 8 layers of bench_init's GPT).
at::Tensor mapped_scratch(at::IntArrayRef sizes, c10::ScalarType dtype) {
  const size_t bytes = c10::multiply_integers(sizes) * c10::elementSize(dtype);
  void* data = mmap(
      nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
      0);
  TORCH_CHECK(
      data != MAP_FAILED, "torchtp: cannot map ", bytes,
      " bytes of scratch for the initial weights");
  return at::from_blob(
      data, sizes, [bytes](void* p) { munmap(p, bytes); },
      at::TensorOptions().dtype(dtype));
}
} // namespace

int64_t init_block_bytes() {
  return block_bytes.load();
}

int64_t set_init_block_bytes(int64_t bytes) {
  // A setting of the process, not of a group: no rank to name.
  TORCH_CHECK(
      bytes > 0,
      "torchtp::detail::set_init_block_bytes: the block must be "
      "positive, got ",
      bytes);
  return block_bytes.exchange(bytes);
}

void draw_shard(
    at::Tensor& shard,
    at::IntArrayRef full_sizes,
    const ShardSpec& spec,
    const Group& group,
    c10::ScalarType draw_dtype,
    int64_t element_multiple,
    const std::function<void(at::Tensor&)>& draw) {
  TORCH_INTERNAL_ASSERT(element_multiple >= 1 && !full_sizes.empty());
  TORCH_INTERNAL_ASSERT(
      at::IntArrayRef(full_shape(shard.sizes(), spec, group)) == full_sizes,
      "shard ", shard.sizes(), " is not a shard of ", full_sizes);
  const int64_t rows = full_sizes[0];
  const int64_t row_numel = c10::multiply_integers(full_sizes.slice(1));
  if (rows == 0 || row_numel == 0) {
    return;
  }
  // Rows per block: a multiple of `step` rows holds a multiple of
  // `element_multiple` elements.
  const int64_t step = element_multiple / std::gcd(row_numel, element_multiple);
  const int64_t row_bytes = row_numel * c10::elementSize(draw_dtype);
  const int64_t block_rows =
      std::max<int64_t>(1, init_block_bytes() / row_bytes / step) * step;
  c10::optional<Partition> part;
  if (!spec.is_replicated()) {
    part.emplace(spec.partition(
        full_sizes[spec.dim] / spec.segments, group.size(), group.rank(),
        "torchtp::detail::draw_shard"));
  }
  at::NoGradGuard no_grad;
  // One scratch block for every draw: a last block that takes in the
  // draw's last rows is under `step` rows longer.
  auto scratch_sizes = full_sizes.vec();
  scratch_sizes[0] = std::min(rows, block_rows + step - 1);
  auto scratch = mapped_scratch(scratch_sizes, draw_dtype);
  for (int64_t r0 = 0; r0 < rows;) {
    int64_t n = std::min(block_rows, rows - r0);
    if ((rows - r0 - n) * row_numel < element_multiple) {
      n = rows - r0; // too few left for a block of their own
    }
    auto block = scratch.narrow(0, 0, n); // contiguous: whole rows
    draw(block);
    if (spec.is_replicated()) {
      shard.narrow(0, r0, n).copy_(block);
    } else if (spec.dim == 0) {
      // Each of this rank's ranges of full rows that meets the block.
      for (const auto& range :
           shard_ranges(*part, spec.segments, part->rank())) {
        const int64_t lo = std::max(range.from, r0);
        const int64_t hi = std::min(range.from + range.length, r0 + n);
        if (lo < hi) {
          shard.narrow(0, range.to + lo - range.from, hi - lo)
              .copy_(block.narrow(0, lo - r0, hi - lo));
        }
      }
    } else {
      shard.narrow(0, r0, n).copy_(
          shard_of(block, spec.dim, spec.segments, *part));
    }
    r0 += n;
  }
}

} // namespace detail

} // namespace torchtp
