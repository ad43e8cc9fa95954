#include "torchtp/random.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/Exception.h>

namespace torchtp {

namespace {
// Megatron's offset between the replicated and the per-rank streams.
constexpr uint64_t kShardedOffset = 2718;
} // namespace

RngTracker::RngTracker(uint64_t seed, const Group& tensor_group)
    : tp_rank_(tensor_group.rank()),
      replicated_(at::make_generator<at::CPUGeneratorImpl>(seed)),
      sharded_(at::make_generator<at::CPUGeneratorImpl>(
          seed + kShardedOffset + tp_rank_)) {}

void RngTracker::reseed(uint64_t seed) {
  replicated_.set_current_seed(seed);
  sharded_.set_current_seed(seed + kShardedOffset + tp_rank_);
}

at::Tensor dropout(
    const at::Tensor& input,
    double p,
    bool training,
    at::Generator& generator) {
  TORCH_CHECK(
      p >= 0 && p < 1, "torchtp::dropout: p must be in [0, 1), got ", p);
  if (!training || p == 0) {
    return input;
  }
  at::Tensor keep;
  {
    // The mask needs no gradient; drawing it in float keeps the stream the
    // same whatever the activation dtype.
    at::NoGradGuard no_grad;
    // Scale in the input's dtype: 1 / (1 - p) rounded to float32 would be
    // off by ~1e-8 for float64 activations.
    keep = at::empty(input.sizes(), input.options().dtype(at::kFloat))
               .bernoulli_(1 - p, generator)
               .to(input.scalar_type())
               .div_(1 - p);
  }
  return input * keep;
}

} // namespace torchtp
