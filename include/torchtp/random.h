#pragma once

#include "torchtp/group.h"

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>

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

  /// Where both streams are: saved and set back by activation
  /// recomputation, so a forward run again draws the same masks.
  struct State {
    at::Tensor replicated;
    at::Tensor sharded;
  };

  /// Restarts both streams from `seed`.
  void reseed(uint64_t seed);
  /// A copy of both streams' states.
  State state() const;
  /// Puts both streams where `state()` found them.
  void set_state(const State& state);
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

/// Activation recomputation (Megatron's `checkpoint`): returns
/// `function(input)` but keeps none of the activations inside it, only
/// `input`; backward runs `function` again and back-propagates through the
/// new run. Memory for compute: one more forward per backward.
///
/// The new run draws the same dropout masks: the states of `rng`'s streams
/// and of the default CPU generator are saved before the first run, set
/// back for the second and then put back where backward found them, so
/// nothing after it sees a difference. `params` are the parameters
/// `function` uses (its module's `parameters()`): their gradients come from
/// the second run, and they make the result require a gradient even when
/// `input` does not. Collectives inside `function` run again in backward,
/// in the same order on every rank. Without gradient mode, or when neither
/// `input` nor a parameter requires a gradient, it is `function(input)`.
///
/// Example:
/// ```
///   auto y = torchtp::recompute(
///       [&](const at::Tensor& x) { return layer->forward(x); }, x,
///       layer->parameters(), rng);
/// ```
at::Tensor recompute(
    std::function<at::Tensor(const at::Tensor&)> function,
    const at::Tensor& input,
    at::TensorList params,
    std::shared_ptr<RngTracker> rng);

/// Inverted dropout drawing its mask from `generator`: zeroes each element
/// with probability `p` and scales the rest by 1 / (1 - p). The identity when
/// not training or `p` is 0.
at::Tensor dropout(
    const at::Tensor& input, double p, bool training, at::Generator& generator);

} // namespace torchtp
