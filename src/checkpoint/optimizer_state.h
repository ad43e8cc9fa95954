#pragma once

// The per-parameter state of Adam and AdamW, read out of and written back
// into torch::optim's own bookkeeping.

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <string>

namespace torchtp::detail {

/// The state an Adam-like optimizer keeps for one parameter
/// (`max_exp_avg_sq` is undefined without amsgrad).
struct AdamState {
  at::Tensor exp_avg, exp_avg_sq, max_exp_avg_sq;
  int64_t step = 0;
};

/// "adamw", "adam", or "" for no optimizer; raises for any other kind.
std::string optimizer_kind(const torch::optim::Optimizer* optimizer);

/// The state `optimizer` keeps for `param`; nullopt when it has none yet (it
/// was never stepped). Raises when the state is not Adam's or AdamW's.
c10::optional<AdamState> read_adam_state(
    const torch::optim::Optimizer& optimizer, const at::Tensor& param);

/// Gives `param` the state `state` in `optimizer`, of the kind
/// `optimizer_kind` names ("adam" or "adamw").
void write_adam_state(
    torch::optim::Optimizer& optimizer,
    const std::string& kind,
    const at::Tensor& param,
    AdamState state);

} // namespace torchtp::detail
