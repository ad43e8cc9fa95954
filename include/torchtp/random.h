#pragma once

#include "torchtp/group.h"

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace torchtp {

/// The two random streams a tensor-parallel model draws dropout masks from
/// (Megatron's `random.py`, with explicit generators instead of a global fork
/// so nothing else's randomness is disturbed):
///
/// - `replicated()`: the same stream on every rank of the tensor-parallel
///   group, for activations every rank holds whole (after a row-parallel
///   layer): every rank draws the same mask, so they stay identical.
/// - `sharded()`: a stream that differs per tensor-parallel rank
///   (seed + 2718 + tp_rank, as Megatron), for activations split over the
///   ranks (attention heads): each rank masks its own part independently.
///
/// Both are reproducible from the seed. `reseed(step_seed)` restarts them, so
/// a training loop that reseeds every step resumes bit-identically.
class RngTracker {
 public:
  RngTracker(uint64_t seed, const Group& tensor_group);

  /// Restarts both streams from `seed`.
  void reseed(uint64_t seed);
  at::Generator& replicated() {
    return replicated_;
  }
  at::Generator& sharded() {
    return sharded_;
  }

 private:
  int tp_rank_;
  at::Generator replicated_;
  at::Generator sharded_;
};

/// Inverted dropout drawing its mask from `generator`: zeroes each element
/// with probability `p` and scales the rest by 1 / (1 - p). The identity when
/// not training or `p` is 0.
at::Tensor dropout(
    const at::Tensor& input, double p, bool training, at::Generator& generator);

} // namespace torchtp
