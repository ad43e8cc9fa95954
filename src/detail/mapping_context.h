#pragma once

// What the autograd functions of the mappings (mappings.cpp) and of the
// fused linears (linear.cpp) share: the group and the split that travel
// into backward, and the checks of a mapping's input.

#include "comm/communicator.h"
#include "torchtp/group.h"
#include "torchtp/partition.h"

#include <torch/autograd.h>

#include <cstdint>
#include <utility>

namespace torchtp::detail {

// The group travels into backward as a capsule in saved_data: IValues cannot
// hold a Group, but they hold any CustomClassHolder, which the communicator is.
inline void save_group(
    torch::autograd::AutogradContext* ctx, const Group& group) {
  ctx->saved_data["group"] =
      c10::IValue::make_capsule(GroupAccess::communicator(group));
}

inline Group saved_group(torch::autograd::AutogradContext* ctx) {
  return GroupAccess::make(c10::static_intrusive_pointer_cast<Communicator>(
      ctx->saved_data["group"].toCapsule()));
}

// A split dim and its Partition, kept for backward like the group.
struct SavedSplit : torch::CustomClassHolder {
  SavedSplit(Partition part, int64_t dim) : part(std::move(part)), dim(dim) {}
  Partition part;
  int64_t dim;
};

inline void save_split(
    torch::autograd::AutogradContext* ctx, const Partition& part, int64_t dim) {
  ctx->saved_data["split"] =
      c10::IValue::make_capsule(c10::make_intrusive<SavedSplit>(part, dim));
}

inline const SavedSplit& saved_split(torch::autograd::AutogradContext* ctx) {
  return *static_cast<SavedSplit*>(ctx->saved_data["split"].toCapsule().get());
}

/// Raises unless `x` is defined and has a dim; `who` names the mapping.
void check_input(const char* who, const at::Tensor& x, const Group& g);

/// `dim` of `input` made non-negative, after checking the input and that
/// `part` is a split of this rank of `group`.
int64_t split_dim(
    const char* who,
    const at::Tensor& input,
    int64_t dim,
    const Partition& part,
    const Group& group);

} // namespace torchtp::detail
