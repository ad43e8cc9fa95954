#include "torchtp/mappings.h"

#include "detail/check.h"
#include "detail/mapping_context.h"
#include "torchtp/partition.h"

#include <ATen/WrapDimUtils.h>
#include <torch/autograd.h>

#include <utility>

namespace torchtp {
namespace {

using detail::save_group;
using detail::save_split;
using detail::saved_group;
using detail::saved_split;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor all_reduce_copy(const at::Tensor& t, const Group& group) {
  // The caller's tensor (or gradient) may be used elsewhere: reduce a copy.
  auto out = t.contiguous().clone();
  group.all_reduce(out);
  return out;
}

// This rank's part of `t` along `dim`, contiguous. `who` names the mapping in
// the error: the scatter's forward or the gather's backward.
at::Tensor own_part(
    const at::Tensor& t,
    const Partition& part,
    int64_t dim,
    const Group& group,
    const char* who) {
  TORCHTP_CHECK(
      t.size(dim) == part.full_size(), std::string("torchtp::") + who, group,
      "expected ", part.full_size(), " indices along dim ", dim, ", got ",
      t.sizes());
  return part.narrow(t, dim).contiguous();
}

struct CopyToTp : torch::autograd::Function<CopyToTp> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, Group g) {
    save_group(ctx, g);
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {all_reduce_copy(grads[0], saved_group(ctx)), at::Tensor()};
  }
};

struct ReduceFromTp : torch::autograd::Function<ReduceFromTp> {
  static at::Tensor forward(AutogradContext*, at::Tensor x, Group g) {
    return all_reduce_copy(x, g);
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    return {grads[0], at::Tensor()};
  }
};

// The four mappings between a split and a whole dim. Each carries the group,
// the dim and its Partition (even or not) into backward.
struct ScatterToTp : torch::autograd::Function<ScatterToTp> {
  static at::Tensor forward(
      AutogradContext* ctx, at::Tensor x, Group g, Partition part, int64_t d) {
    save_group(ctx, g);
    save_split(ctx, part, d);
    return own_part(x, part, d, g, "scatter_to_tp_region");
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& s = saved_split(ctx);
    return {
        saved_group(ctx).all_gather(grads[0], s.dim, s.part), at::Tensor(),
        at::Tensor(), at::Tensor()};
  }
};

struct GatherFromTp : torch::autograd::Function<GatherFromTp> {
  static at::Tensor forward(
      AutogradContext* ctx, at::Tensor x, Group g, Partition part, int64_t d) {
    save_group(ctx, g);
    save_split(ctx, part, d);
    return g.all_gather(x, d, part);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& s = saved_split(ctx);
    return {
        own_part(
            grads[0], s.part, s.dim, saved_group(ctx),
            "gather_from_tp_region (backward)"),
        at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct GatherFromSequence : torch::autograd::Function<GatherFromSequence> {
  static at::Tensor forward(
      AutogradContext* ctx, at::Tensor x, Group g, Partition part, int64_t d) {
    save_group(ctx, g);
    save_split(ctx, part, d);
    return g.all_gather(x, d, part);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& s = saved_split(ctx);
    return {
        saved_group(ctx).reduce_scatter(grads[0], s.dim, s.part), at::Tensor(),
        at::Tensor(), at::Tensor()};
  }
};

struct ReduceScatterToSequence
    : torch::autograd::Function<ReduceScatterToSequence> {
  static at::Tensor forward(
      AutogradContext* ctx, at::Tensor x, Group g, Partition part, int64_t d) {
    save_group(ctx, g);
    save_split(ctx, part, d);
    return g.reduce_scatter(x, d, part);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& s = saved_split(ctx);
    return {
        saved_group(ctx).all_gather(grads[0], s.dim, s.part), at::Tensor(),
        at::Tensor(), at::Tensor()};
  }
};

Partition even_split(
    int64_t full, const Group& group, const char* who, const at::Tensor& x) {
  return Partition(
      full, group.size(), group.rank(),
      std::string("torchtp::") + who + ": split dim of " + c10::str(x.sizes()));
}

} // namespace

namespace detail {

void check_input(const char* who, const at::Tensor& x, const Group& g) {
  TORCHTP_CHECK(
      x.defined(), std::string("torchtp::") + who, g, "undefined input");
  TORCHTP_CHECK(
      x.dim() >= 1, std::string("torchtp::") + who, g,
      "expected a tensor with at least one dim, got shape ", x.sizes());
}

int64_t split_dim(
    const char* who,
    const at::Tensor& input,
    int64_t dim,
    const Partition& part,
    const Group& group) {
  check_input(who, input, group);
  TORCHTP_CHECK(
      part.parts() == group.size() && part.rank() == group.rank(),
      std::string("torchtp::") + who, group, "the split is of rank ",
      part.rank(), " of ", part.parts(), " parts, not of this rank");
  return c10::maybe_wrap_dim(dim, input.dim());
}

} // namespace detail

at::Tensor copy_to_tp_region(const at::Tensor& input, const Group& group) {
  detail::check_input("copy_to_tp_region", input, group);
  return group.size() == 1 ? input : CopyToTp::apply(input, group);
}

at::Tensor reduce_from_tp_region(const at::Tensor& input, const Group& group) {
  detail::check_input("reduce_from_tp_region", input, group);
  return group.size() == 1 ? input : ReduceFromTp::apply(input, group);
}

at::Tensor scatter_to_tp_region(const at::Tensor& input, const Group& group) {
  detail::check_input("scatter_to_tp_region", input, group);
  return scatter_to_tp_region(
      input, group,
      even_split(input.size(-1), group, "scatter_to_tp_region", input));
}

at::Tensor scatter_to_tp_region(
    const at::Tensor& input, const Group& group, const Partition& part) {
  const auto d =
      detail::split_dim("scatter_to_tp_region", input, -1, part, group);
  return group.size() == 1 ? input : ScatterToTp::apply(input, group, part, d);
}

at::Tensor gather_from_tp_region(const at::Tensor& input, const Group& group) {
  detail::check_input("gather_from_tp_region", input, group);
  return gather_from_tp_region(
      input, group,
      even_split(
          input.size(-1) * group.size(), group, "gather_from_tp_region",
          input));
}

at::Tensor gather_from_tp_region(
    const at::Tensor& input, const Group& group, const Partition& part) {
  const auto d =
      detail::split_dim("gather_from_tp_region", input, -1, part, group);
  return group.size() == 1 ? input : GatherFromTp::apply(input, group, part, d);
}

at::Tensor gather_from_sequence_region(
    const at::Tensor& input, const Group& group) {
  detail::check_input("gather_from_sequence_region", input, group);
  return gather_from_sequence_region(
      input, group,
      even_split(
          input.size(0) * group.size(), group, "gather_from_sequence_region",
          input),
      0);
}

at::Tensor gather_from_sequence_region(
    const at::Tensor& input,
    const Group& group,
    const Partition& seq,
    int64_t dim) {
  const auto d =
      detail::split_dim("gather_from_sequence_region", input, dim, seq, group);
  return group.size() == 1 ? input
                           : GatherFromSequence::apply(input, group, seq, d);
}

at::Tensor reduce_scatter_to_sequence_region(
    const at::Tensor& input, const Group& group) {
  detail::check_input("reduce_scatter_to_sequence_region", input, group);
  return reduce_scatter_to_sequence_region(
      input, group,
      even_split(
          input.size(0), group, "reduce_scatter_to_sequence_region", input),
      0);
}

at::Tensor reduce_scatter_to_sequence_region(
    const at::Tensor& input,
    const Group& group,
    const Partition& seq,
    int64_t dim) {
  const auto d = detail::split_dim(
      "reduce_scatter_to_sequence_region", input, dim, seq, group);
  return group.size() == 1
             ? input
             : ReduceScatterToSequence::apply(input, group, seq, d);
}

} // namespace torchtp
