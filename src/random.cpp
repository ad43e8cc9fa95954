#include "torchtp/random.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>

#include <mutex>
#include <utility>
#include <vector>

namespace torchtp {

namespace {
// Megatron's offset between the replicated and the per-rank streams.
constexpr uint64_t kShardedOffset = 2718;

at::Tensor state_of(at::Generator generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

void set_state_of(at::Generator generator, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}
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

RngTracker::State RngTracker::state() const {
  return {state_of(replicated_), state_of(sharded_)};
}

void RngTracker::set_state(const State& state) {
  set_state_of(replicated_, state.replicated);
  set_state_of(sharded_, state.sharded);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What backward needs to run the function again: kept in the autograd
// context as a capsule (an IValue holds any CustomClassHolder).
struct RecomputeContext : torch::CustomClassHolder {
  std::function<at::Tensor(const at::Tensor&)> function;
  std::vector<at::Tensor> params;
  std::shared_ptr<RngTracker> rng;
  // Before the first run.
  RngTracker::State rng_state;
  at::Tensor default_state;
};

// For its lifetime, the generators are where they were before the first
// run; afterwards, where they were when it started (even on an error).
class ReplayGenerators {
 public:
  explicit ReplayGenerators(const RecomputeContext& context)
      : rng_(context.rng), default_(at::detail::getDefaultCPUGenerator()) {
    default_now_ = state_of(default_);
    set_state_of(default_, context.default_state);
    if (rng_) {
      rng_now_ = rng_->state();
      rng_->set_state(context.rng_state);
    }
  }
  ~ReplayGenerators() {
    set_state_of(default_, default_now_);
    if (rng_) {
      rng_->set_state(rng_now_);
    }
  }
  ReplayGenerators(const ReplayGenerators&) = delete;
  ReplayGenerators& operator=(const ReplayGenerators&) = delete;

 private:
  std::shared_ptr<RngTracker> rng_;
  at::Generator default_;
  at::Tensor default_now_;
  RngTracker::State rng_now_;
};

struct Recompute : torch::autograd::Function<Recompute> {
  // `params` are inputs so that the engine asks for (and accumulates) their
  // gradients; the function reads them from the module itself.
  static at::Tensor forward(
      AutogradContext* ctx,
      at::Tensor input,
      at::TensorList /*params*/,
      c10::intrusive_ptr<RecomputeContext> context) {
    ctx->save_for_backward({input});
    ctx->saved_data["context"] = c10::IValue::make_capsule(context);
    // Autograd is off in here: nothing inside is kept.
    return context->function(input);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto context = c10::static_intrusive_pointer_cast<RecomputeContext>(
        ctx->saved_data["context"].toCapsule());
    const auto n = context->params.size();
    variable_list result(1 + n + 1); // input, params, context
    auto input = ctx->get_saved_variables()[0].detach().requires_grad_(
        ctx->needs_input_grad(0));
    at::Tensor output;
    {
      ReplayGenerators replay(*context);
      at::AutoGradMode enable_grad(true);
      output = context->function(input);
    }
    // Gradients are wanted for these, in this order.
    variable_list wrt;
    std::vector<size_t> slot;
    if (ctx->needs_input_grad(0)) {
      wrt.push_back(input);
      slot.push_back(0);
    }
    for (size_t i = 0; i < n; ++i) {
      if (ctx->needs_input_grad(1 + i) && context->params[i].requires_grad()) {
        wrt.push_back(context->params[i]);
        slot.push_back(1 + i);
      }
    }
    if (wrt.empty() || !output.requires_grad()) {
      return result;
    }
    auto computed = torch::autograd::grad(
        {output}, wrt, {grads[0]}, /*retain_graph=*/false,
        /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t i = 0; i < wrt.size(); ++i) {
      result[slot[i]] = computed[i];
    }
    return result;
  }
};

} // namespace

at::Tensor recompute(
    std::function<at::Tensor(const at::Tensor&)> function,
    const at::Tensor& input,
    at::TensorList params,
    std::shared_ptr<RngTracker> rng) {
  bool wants_grad = input.requires_grad();
  for (const auto& p : params) {
    wants_grad = wants_grad || p.requires_grad();
  }
  if (!at::GradMode::is_enabled() || !wants_grad) {
    return function(input);
  }
  auto context = c10::make_intrusive<RecomputeContext>();
  context->function = std::move(function);
  context->params.assign(params.begin(), params.end());
  context->rng = std::move(rng);
  if (context->rng) {
    context->rng_state = context->rng->state();
  }
  context->default_state = state_of(at::detail::getDefaultCPUGenerator());
  return Recompute::apply(input, params, context);
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
