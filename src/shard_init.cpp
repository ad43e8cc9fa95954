// Initialisation that gives each rank only its slice, with the values the
// full draw would give (detail/shard_init.h): the block-wise draw and the
// draws of torch::nn::Linear.
#include "detail/shard_init.h"

#include "detail/dtype.h"

#include <ATen/ops/from_blob.h>
#include <c10/util/accumulate.h>
#include <torch/nn/init.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>

namespace torchtp {
namespace detail {
namespace {
// 4 MiB: about 1 ms of drawing, so the calls cost nothing next to the
// draws, and small next to any layer worth splitting.
std::atomic<int64_t> block_bytes{int64_t{4} << 20};

// Set by SkipInitGuard.
thread_local bool skip_init = false;

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

SkipInitGuard::SkipInitGuard() : previous_(skip_init) {
  skip_init = true;
}

SkipInitGuard::~SkipInitGuard() {
  skip_init = previous_;
}

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
  if (rows == 0 || row_numel == 0 || skip_init) {
    return;
  }
  // Rows per block: a multiple of `step` rows holds a multiple of
  // `element_multiple` elements.
  const int64_t step = element_multiple / std::gcd(row_numel, element_multiple);
  const int64_t row_bytes = row_numel * c10::elementSize(draw_dtype);
  const int64_t block_rows =
      std::max<int64_t>(1, init_block_bytes() / row_bytes / step) * step;
  c10::optional<Partition> part;
  std::vector<SegmentRange> ranges;
  if (spec.dim == 0) {
    ranges = shard_ranges(
        spec, rows, group.size(), group.rank(), "torchtp::detail::draw_shard");
  } else if (!spec.is_replicated()) {
    TORCH_INTERNAL_ASSERT(spec.kv_heads == 0, "shared heads split dim 0");
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
      for (const auto& range : ranges) {
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

std::pair<torch::Tensor, torch::Tensor> linear_init(
    int64_t in_features, int64_t out_features, bool bias, torch::Dtype dtype) {
  auto w = torch::empty({out_features, in_features}, dtype);
  auto b = bias ? torch::empty({out_features}, dtype) : torch::Tensor();
  linear_init_shard(
      w, b, ShardSpec::replicated(), ShardSpec::replicated(), Group::self());
  return {w, b};
}

void linear_init_shard(
    torch::Tensor& weight,
    torch::Tensor& bias,
    const ShardSpec& weight_spec,
    const ShardSpec& bias_spec,
    const Group& group) {
  const auto full = full_shape(weight.sizes(), weight_spec, group);
  const auto draw = compute_dtype(weight.scalar_type());
  // The same draws, in the same order, as torch::nn::LinearImpl: the weight
  // first, then the bias from the weight's fan-in. A block of whole rows
  // has the weight's fan-in, so kaiming_uniform_ gives it the same bound;
  // uniform_ is elementwise, so any blocks give the full draw's values.
  draw_shard(
      weight, full, weight_spec, group, draw, /*element_multiple=*/1,
      [](torch::Tensor& block) {
        torch::nn::init::kaiming_uniform_(block, std::sqrt(5));
      });
  if (bias.defined()) {
    const auto bound = 1 / std::sqrt(full[1]);
    draw_shard(
        bias, full_shape(bias.sizes(), bias_spec, group), bias_spec, group,
        draw, /*element_multiple=*/1, [bound](torch::Tensor& block) {
          torch::nn::init::uniform_(block, -bound, bound);
        });
  }
}

} // namespace detail

} // namespace torchtp
