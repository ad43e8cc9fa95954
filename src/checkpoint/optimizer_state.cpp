#include "checkpoint/optimizer_state.h"

#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>

#include <memory>

namespace torchtp::detail {
namespace {

// The key under which torch::optim keeps a parameter's state. Optimizer's
// state() is a map from string to state with no lookup by parameter, and
// Adam::step / AdamW::step find (or create) a parameter's state under
// c10::guts::to_string(p.unsafeGetTensorImpl()), the address of the
// parameter's TensorImpl, as torch::optim::serialize does when it loads
// state. State read under another key is not found, and state written under
// another key is never used: step() would start the parameter from zero.
// The address only means something in this process, which is why a
// checkpoint stores state by parameter name and rebuilds the key on load.
std::string state_key(const at::Tensor& param) {
  return c10::guts::to_string(param.unsafeGetTensorImpl());
}

// AdamWParamState is not an AdamParamState: each kind is its own class.
template <typename S>
bool read_as(const torch::optim::OptimizerParamState* s, AdamState& out) {
  auto* st = dynamic_cast<const S*>(s);
  if (st == nullptr) {
    return false;
  }
  out = {st->exp_avg(), st->exp_avg_sq(), st->max_exp_avg_sq(), st->step()};
  return true;
}

template <typename S>
void write_as(
    torch::optim::Optimizer& optimizer, const at::Tensor& param, AdamState st) {
  auto state = std::make_unique<S>();
  state->step(st.step);
  state->exp_avg(st.exp_avg);
  state->exp_avg_sq(st.exp_avg_sq);
  if (st.max_exp_avg_sq.defined()) {
    state->max_exp_avg_sq(st.max_exp_avg_sq);
  }
  optimizer.state()[state_key(param)] = std::move(state);
}

} // namespace

std::string optimizer_kind(const torch::optim::Optimizer* optimizer) {
  if (optimizer == nullptr) {
    return "";
  }
  if (dynamic_cast<const torch::optim::AdamW*>(optimizer)) {
    return "adamw";
  }
  if (dynamic_cast<const torch::optim::Adam*>(optimizer)) {
    return "adam";
  }
  TORCH_CHECK(
      false,
      "torchtp checkpoints save the state of Adam and AdamW "
      "optimizers; got another kind");
}

c10::optional<AdamState> read_adam_state(
    const torch::optim::Optimizer& optimizer, const at::Tensor& param) {
  auto it = optimizer.state().find(state_key(param));
  if (it == optimizer.state().end()) {
    return c10::nullopt;
  }
  AdamState st;
  TORCH_CHECK(
      read_as<torch::optim::AdamWParamState>(it->second.get(), st) ||
          read_as<torch::optim::AdamParamState>(it->second.get(), st),
      "torchtp checkpoints save Adam and AdamW state only");
  return st;
}

void write_adam_state(
    torch::optim::Optimizer& optimizer,
    const std::string& kind,
    const at::Tensor& param,
    AdamState state) {
  if (kind == "adamw") {
    write_as<torch::optim::AdamWParamState>(optimizer, param, std::move(state));
  } else {
    write_as<torch::optim::AdamParamState>(optimizer, param, std::move(state));
  }
}

} // namespace torchtp::detail
