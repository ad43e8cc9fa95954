#include "torchtp/mappings.h"

#include "detail/check.h"
#include "comm/communicator.h"
#include "torchtp/partition.h"

#include <ATen/WrapDimUtils.h>
#include <torch/autograd.h>

#include <utility>

namespace torchtp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Comm = detail::Communicator;

// The group travels into backward as a capsule in saved_data: IValues cannot
// hold a Group, but they hold any CustomClassHolder, which the communicator is.
void save_group(AutogradContext* ctx, const Group& group) {
  ctx->saved_data["group"] =
      c10::IValue::make_capsule(detail::GroupAccess::communicator(group));
}

Group saved_group(AutogradContext* ctx) {
  return detail::GroupAccess::make(c10::static_intrusive_pointer_cast<Comm>(
      ctx->saved_data["group"].toCapsule()));
}

at::Tensor all_reduce_copy(const at::Tensor& t, const Group& group) {
  // The caller's tensor (or gradient) may be used elsewhere: reduce a copy.
  auto out = t.contiguous().clone();
  group.all_reduce(out);
  return out;
}

// A split dim and its Partition, kept for backward like the group.
struct SavedSplit : torch::CustomClassHolder {
  SavedSplit(Partition part, int64_t dim) : part(std::move(part)), dim(dim) {}
  Partition part;
  int64_t dim;
};

void save_split(AutogradContext* ctx, const Partition& part, int64_t dim) {
  ctx->saved_data["split"] =
      c10::IValue::make_capsule(c10::make_intrusive<SavedSplit>(part, dim));
}

const SavedSplit& saved_split(AutogradContext* ctx) {
  return *static_cast<SavedSplit*>(
      ctx->saved_data["split"].toCapsule().get());
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

// Reduces the caller's fresh partial sum in place: autograd is told it was
// modified; the linear that produced it keeps no reference to its output.
struct ReduceFromTpInPlace : torch::autograd::Function<ReduceFromTpInPlace> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, Group g) {
    g.all_reduce(x); // in place, strided or not
    ctx->mark_dirty({x});
    return x;
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    return {grads[0], at::Tensor()};
  }
};

// y = x W^T + b with the input gradient all-reduced over the group. The
// all-reduce of the fresh input gradient starts first and runs while the
// weight gradient (the larger GEMM) is computed.
// The weight and bias gradients of `y = x W^T + b` (the ones the context
// asks for) from the gradient `grad` of y: the part both fused linears
// below compute while their input gradient travels.
std::pair<at::Tensor, at::Tensor> weight_and_bias_grads(
    AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& x) {
  at::Tensor grad_w, grad_b;
  const auto grad_2d = grad.reshape({-1, grad.size(-1)});
  if (ctx->needs_input_grad(1)) {
    grad_w = grad_2d.t().mm(x.reshape({-1, x.size(-1)}));
  }
  if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
    grad_b = grad_2d.sum(0);
  }
  return {grad_w, grad_b};
}

// y = x W^T + b with the input gradient all-reduced over the group. The
// all-reduce of the fresh input gradient starts first and runs while the
// weight gradient (the larger GEMM) is computed.
struct CopyToTpAndLinear : torch::autograd::Function<CopyToTpAndLinear> {
  static at::Tensor forward(
      AutogradContext* ctx,
      at::Tensor x,
      at::Tensor weight,
      c10::optional<at::Tensor> bias, // an undefined Tensor is no input
      Group g) {
    save_group(ctx, g);
    ctx->save_for_backward({x, weight});
    ctx->saved_data["has_bias"] = bias.has_value();
    return detail::linear(x, weight, bias.has_value() ? *bias : at::Tensor());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& weight = saved[1];
    const auto grad = grads[0].contiguous();
    at::Tensor grad_x;
    c10::optional<Work> pending;
    if (ctx->needs_input_grad(0)) {
      grad_x = at::matmul(grad, weight); // fresh: reduced in place
      pending = saved_group(ctx).all_reduce_async(grad_x);
    }
    auto [grad_w, grad_b] = weight_and_bias_grads(ctx, grad, x);
    if (pending) {
      pending->wait();
    }
    return {grad_x, grad_w, grad_b, at::Tensor()};
  }
};

// y = gather(x) W^T + b, the sequence gathered along `dim`, keeping only
// this rank's part x for backward: backward gathers it again for the
// weight gradient and reduce-scatters the input gradient while that
// gradient is computed.
struct GatherSequenceAndLinear
    : torch::autograd::Function<GatherSequenceAndLinear> {
  static at::Tensor forward(
      AutogradContext* ctx,
      at::Tensor x,
      at::Tensor weight,
      c10::optional<at::Tensor> bias, // an undefined Tensor is no input
      Group g,
      Partition seq,
      int64_t dim) {
    save_group(ctx, g);
    save_split(ctx, seq, dim);
    ctx->save_for_backward({x, weight});
    ctx->saved_data["has_bias"] = bias.has_value();
    return detail::linear(
        g.all_gather(x, dim, seq), weight,
        bias.has_value() ? *bias : at::Tensor());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = saved_group(ctx);
    const auto& s = saved_split(ctx);
    const auto saved = ctx->get_saved_variables();
    const auto& weight = saved[1];
    const auto grad = grads[0].contiguous();
    // Gathered again rather than kept since forward.
    const auto whole = g.all_gather(saved[0], s.dim, s.part);
    c10::optional<Work> scattering;
    if (ctx->needs_input_grad(0)) {
      // Every rank's partial input gradient of the whole sequence: summed
      // and split back in one exchange.
      scattering = g.reduce_scatter_async(
          at::matmul(grad, weight), s.dim, s.part);
    }
    auto [grad_w, grad_b] = weight_and_bias_grads(ctx, grad, whole);
    at::Tensor grad_x;
    if (scattering) {
      grad_x = scattering->wait();
    }
    return {grad_x,       grad_w,       grad_b,
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

void check_input(const char* who, const at::Tensor& x, const Group& g) {
  TORCHTP_CHECK(
      x.defined(), std::string("torchtp::") + who, g, "undefined input");
  TORCHTP_CHECK(
      x.dim() >= 1, std::string("torchtp::") + who, g,
      "expected a tensor with at least one dim, got shape ", x.sizes());
}

// `dim` of `input` made non-negative, with `part` a split of this rank of
// `group`.
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

Partition even_split(
    int64_t full, const Group& group, const char* who, const at::Tensor& x) {
  return Partition(
      full, group.size(), group.rank(),
      std::string("torchtp::") + who + ": split dim of " + c10::str(x.sizes()));
}

} // namespace

at::Tensor copy_to_tp_region(const at::Tensor& input, const Group& group) {
  check_input("copy_to_tp_region", input, group);
  return group.size() == 1 ? input : CopyToTp::apply(input, group);
}

at::Tensor reduce_from_tp_region(const at::Tensor& input, const Group& group) {
  check_input("reduce_from_tp_region", input, group);
  return group.size() == 1 ? input : ReduceFromTp::apply(input, group);
}

at::Tensor scatter_to_tp_region(const at::Tensor& input, const Group& group) {
  check_input("scatter_to_tp_region", input, group);
  return scatter_to_tp_region(
      input, group,
      even_split(input.size(-1), group, "scatter_to_tp_region", input));
}

at::Tensor scatter_to_tp_region(
    const at::Tensor& input, const Group& group, const Partition& part) {
  const auto d = split_dim("scatter_to_tp_region", input, -1, part, group);
  return group.size() == 1 ? input : ScatterToTp::apply(input, group, part, d);
}

at::Tensor gather_from_tp_region(const at::Tensor& input, const Group& group) {
  check_input("gather_from_tp_region", input, group);
  return gather_from_tp_region(
      input, group,
      even_split(
          input.size(-1) * group.size(), group, "gather_from_tp_region",
          input));
}

at::Tensor gather_from_tp_region(
    const at::Tensor& input, const Group& group, const Partition& part) {
  const auto d = split_dim("gather_from_tp_region", input, -1, part, group);
  return group.size() == 1 ? input
                           : GatherFromTp::apply(input, group, part, d);
}

at::Tensor gather_from_sequence_region(
    const at::Tensor& input, const Group& group) {
  check_input("gather_from_sequence_region", input, group);
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
      split_dim("gather_from_sequence_region", input, dim, seq, group);
  return group.size() == 1 ? input
                           : GatherFromSequence::apply(input, group, seq, d);
}

at::Tensor reduce_scatter_to_sequence_region(
    const at::Tensor& input, const Group& group) {
  check_input("reduce_scatter_to_sequence_region", input, group);
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
  const auto d =
      split_dim("reduce_scatter_to_sequence_region", input, dim, seq, group);
  return group.size() == 1
      ? input
      : ReduceScatterToSequence::apply(input, group, seq, d);
}

namespace detail {

at::Tensor linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& bias) {
  const auto dtype = input.scalar_type();
  const bool one_row = input.dim() >= 1 && input.numel() == input.size(-1) &&
      input.numel() > 0 && weight.dim() == 2 &&
      weight.scalar_type() == dtype &&
      (dtype == at::kFloat || dtype == at::kDouble);
  if (!one_row) {
    return at::linear(input, weight, bias);
  }
  auto shape = input.sizes().vec();
  shape.back() = weight.size(0);
  auto y = bias.defined() ? at::addmv(bias, weight, input.reshape({-1}))
                          : at::mv(weight, input.reshape({-1}));
  return y.view(shape);
}

at::Tensor copy_to_tp_region_and_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const Group& group) {
  if (group.size() == 1) {
    return linear(input, weight, bias);
  }
  return CopyToTpAndLinear::apply(
      input, weight,
      bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt, group);
}

at::Tensor gather_sequence_and_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const Group& group,
    const Partition& seq,
    int64_t dim) {
  if (group.size() == 1) {
    return linear(input, weight, bias);
  }
  const auto d =
      split_dim("gather_sequence_and_linear", input, dim, seq, group);
  return GatherSequenceAndLinear::apply(
      input, weight,
      bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt, group,
      seq, d);
}

at::Tensor reduce_from_tp_region_in_place(
    at::Tensor input, const Group& group) {
  check_input("reduce_from_tp_region", input, group);
  return group.size() == 1 ? input : ReduceFromTpInPlace::apply(input, group);
}

} // namespace detail
} // namespace torchtp
