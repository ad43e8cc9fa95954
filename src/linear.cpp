#include "torchtp/linear.h"

#include "detail/check.h"
#include "detail/dtype.h"
#include "detail/fused_linear.h"
#include "detail/mapping_context.h"
#include "detail/options.h"
#include "detail/quantize_parameter.h"
#include "detail/shard_init.h"
#include "torchtp/mappings.h"

namespace torchtp {
namespace detail {
namespace {

// The linears fused with their mapping (Megatron keeps these next to its
// layers too): one autograd function each, so backward can overlap the
// input gradient's collective with the weight gradient's GEMM.

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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

// Whether autograd records a product of these: the fused functions are
// needed only then (decoding skips them and their bookkeeping).
bool records_grad(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::GradMode::is_enabled() &&
         (x.requires_grad() || weight.requires_grad() ||
          (bias.defined() && bias.requires_grad()));
}

// The weight a recorded product differentiates through: an int8 weight
// widened to the input's dtype (it has no gradient of its own).
at::Tensor dense(
    const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& x) {
  return weight.scalar_type() == at::kChar
             ? dequantize_rows(weight, scale, x.scalar_type())
             : weight;
}

// The weight and bias gradients of `y = x W^T + b` (the ones the context
// asks for) from the gradient `grad` of y: the part both fused linears
// below compute while their input gradient travels.
std::pair<at::Tensor, at::Tensor> weight_and_bias_grads(
    AutogradContext* ctx, const at::Tensor& grad, const at::Tensor& x) {
  at::Tensor grad_w, grad_b;
  const auto grad_2d = grad.reshape({-1, grad.size(-1)});
  if (ctx->needs_input_grad(1)) {
    grad_w = detail::matmul(grad_2d.t(), x.reshape({-1, x.size(-1)}));
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
      grad_x = detail::matmul(grad, weight); // fresh: reduced in place
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
      scattering =
          g.reduce_scatter_async(detail::matmul(grad, weight), s.dim, s.part);
    }
    auto [grad_w, grad_b] = weight_and_bias_grads(ctx, grad, whole);
    at::Tensor grad_x;
    if (scattering) {
      grad_x = scattering->wait();
    }
    return {grad_x, grad_w, grad_b, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Identity forward; backward sums the shared key/value heads' gradients
// over the ranks holding them (see sum_shared_heads).
struct SumSharedHeads : torch::autograd::Function<SumSharedHeads> {
  static at::Tensor forward(
      AutogradContext* ctx,
      at::Tensor shard,
      int64_t full_size,
      int64_t kv_heads,
      int64_t unit,
      bool uneven,
      Group g) {
    save_group(ctx, g);
    ctx->saved_data["full_size"] = full_size;
    ctx->saved_data["kv_heads"] = kv_heads;
    ctx->saved_data["unit"] = unit;
    ctx->saved_data["uneven"] = uneven;
    return shard.view_as(shard);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = saved_group(ctx);
    ShardSpec spec{0, 3};
    spec.kv_heads = ctx->saved_data["kv_heads"].toInt();
    spec.unit = ctx->saved_data["unit"].toInt();
    spec.uneven = ctx->saved_data["uneven"].toBool();
    const int64_t full = ctx->saved_data["full_size"].toInt();
    const auto ranges =
        shard_ranges(spec, full, g.size(), g.rank(), "sum_shared_heads");
    // K and V of every head, this rank's gradients in its own heads' rows.
    const int64_t kv_full = spec.kv_heads * spec.unit;
    const int64_t q_full = full - 2 * kv_full;
    auto grad = grads[0].clone();
    auto sizes = grad.sizes().vec();
    sizes[0] = 2 * kv_full;
    auto kv = at::zeros(sizes, grad.options());
    for (size_t s = 1; s < ranges.size(); ++s) {
      kv.narrow(0, ranges[s].from - q_full, ranges[s].length)
          .copy_(grad.narrow(0, ranges[s].to, ranges[s].length));
    }
    g.all_reduce(kv);
    for (size_t s = 1; s < ranges.size(); ++s) {
      grad.narrow(0, ranges[s].to, ranges[s].length)
          .copy_(kv.narrow(0, ranges[s].from - q_full, ranges[s].length));
    }
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

} // namespace

at::Tensor copy_to_tp_region_and_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const Group& group,
    const at::Tensor& scale) {
  if (group.size() == 1 || !records_grad(input, weight, bias)) {
    return linear(input, weight, bias, scale);
  }
  return CopyToTpAndLinear::apply(
      input, dense(weight, scale, input),
      bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt, group);
}

at::Tensor gather_sequence_and_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const Group& group,
    const Partition& seq,
    int64_t dim,
    const at::Tensor& scale) {
  if (group.size() == 1) {
    return linear(input, weight, bias, scale);
  }
  const auto d =
      split_dim("gather_sequence_and_linear", input, dim, seq, group);
  if (!records_grad(input, weight, bias)) {
    return linear(group.all_gather(input, d, seq), weight, bias, scale);
  }
  return GatherSequenceAndLinear::apply(
      input, dense(weight, scale, input),
      bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt, group,
      seq, d);
}

at::Tensor sum_shared_heads(
    const at::Tensor& shard, const ShardSpec& spec, const Group& group) {
  if (!shard.defined() || spec.kv_heads == 0 || group.size() == 1 ||
      !at::GradMode::is_enabled() || !shard.requires_grad()) {
    return shard;
  }
  // Shared when the ranks' key/value heads add up to more than there are.
  int64_t held = 0;
  for (int64_t r = 0; r < group.size(); ++r) {
    held += shard_ranges(spec, spec.full_size, group.size(), r,
                         "sum_shared_heads")[1].length;
  }
  if (held == spec.kv_heads * spec.unit) {
    return shard;
  }
  return SumSharedHeads::apply(
      shard, spec.full_size, spec.kv_heads, spec.unit, spec.uneven, group);
}

at::Tensor reduce_from_tp_region_in_place(
    at::Tensor input, const Group& group) {
  check_input("reduce_from_tp_region", input, group);
  return group.size() == 1 ? input : ReduceFromTpInPlace::apply(input, group);
}

} // namespace detail

namespace {

constexpr const char* kColumn = "torchtp::ColumnParallelLinear";
constexpr const char* kRow = "torchtp::RowParallelLinear";

// Shape and dtype check at the entry of forward: names both shapes and the
// rank, so a user knows which rank disagreed and with what.
void check_layer_input(
    const char* layer,
    const torch::Tensor& input,
    int64_t width,
    const char* width_name,
    const torch::Tensor& weight,
    const Group& g) {
  TORCHTP_CHECK(input.defined(), layer, g, "undefined input");
  TORCHTP_CHECK(
      input.dim() >= 1 && input.size(-1) == width, layer, g,
      "expected input of shape [*, ", width, "] (", width_name, ") but got ",
      input.sizes(), "; weight shard is ", weight.sizes());
  if (weight.scalar_type() == torch::kChar) { // quantize_int8
    TORCHTP_CHECK(
        input.scalar_type() == torch::kFloat ||
            input.scalar_type() == torch::kBFloat16,
        layer, g,
        "expected input dtype Float or BFloat16 (the weight is int8) but got ",
        input.scalar_type(), " for input of shape ", input.sizes());
  } else {
    TORCHTP_CHECK(
        input.scalar_type() == weight.scalar_type(), layer, g,
        "expected input dtype ", weight.scalar_type(),
        " (the weight's) but got ", input.scalar_type(),
        " for input of shape ", input.sizes());
  }
  TORCHTP_CHECK(
      input.device() == weight.device(), layer, g, "expected input on ",
      weight.device(), " (the weight's device) but got one on ",
      input.device());
}

// Registers `weight` and, when `has_bias`, `bias` (else an undefined bias,
// as torch::nn::Linear does).
void register_weight_and_bias(
    torch::nn::Module& module,
    torch::Tensor& weight,
    torch::Tensor& bias,
    torch::IntArrayRef weight_shape,
    int64_t bias_size,
    bool has_bias,
    torch::Dtype dtype) {
  weight =
      module.register_parameter("weight", torch::empty(weight_shape, dtype));
  bias =
      has_bias
          ? module.register_parameter("bias", torch::empty({bias_size}, dtype))
          : module.register_parameter("bias", {}, /*requires_grad=*/false);
}

// Both layers' load_full_weights: each tensor through its ShardSpec.
void load_weight_and_bias(
    const char* layer,
    const Sharded& module,
    torch::Tensor& weight,
    torch::Tensor& bias,
    const torch::Tensor& full_weight,
    const torch::Tensor& full_bias,
    const Group& g) {
  const std::string component = std::string(layer) + "::load_full_weights";
  copy_shard_of(
      weight, full_weight, module.shard_spec("weight"), g, component, "weight");
  if (bias.defined()) {
    copy_shard_of(
        bias, full_bias, module.shard_spec("bias"), g, component, "bias");
  } else {
    TORCHTP_CHECK(
        !full_bias.defined(), component, g,
        "got a bias for a layer built with bias(false)");
  }
}

void check_positive(
    const char* layer, int64_t in, int64_t out, const Group& g) {
  TORCHTP_CHECK(
      in > 0 && out > 0, layer, g,
      "in_features and out_features must be positive, got ", in, " and ", out);
}

} // namespace

// ---------------------------------------------------------------------------
// ColumnParallelLinear

ColumnParallelLinearImpl::ColumnParallelLinearImpl(
    ColumnParallelLinearOptions options_)
    : options(std::move(options_)) {
  reset();
}

void ColumnParallelLinearImpl::reset() {
  group_ = detail::group_or_default(options.group());
  check_positive(
      kColumn, options.in_features(), options.out_features(), *group_);
  const int64_t kv = options.kv_heads();
  TORCHTP_CHECK(
      kv >= 0, kColumn, *group_, "kv_heads must not be negative, got ", kv);
  // With kv_heads the segments differ in size: each is whole heads.
  const int64_t segments = kv > 0 ? 1 : options.segments();
  TORCHTP_CHECK(
      segments >= 1 && options.out_features() % segments == 0, kColumn, *group_,
      "out_features (", options.out_features(),
      ") is not divisible by segments (", segments, ")");
  const int64_t unit = options.split_unit();
  TORCHTP_CHECK(
      unit >= 1 && (options.out_features() / segments) % unit == 0, kColumn,
      *group_, "out_features", (segments > 1 ? " / segments" : ""), " (",
      options.out_features() / segments,
      ") is not a whole number of split units of ", unit);
  int64_t local_out = 0;
  if (kv == 0) {
    partition_ = Partition(
        options.out_features() / segments, group_->size(), group_->rank(),
        std::string(kColumn) + ": out_features" +
            (segments > 1 ? " / segments" : "") +
            (unit > 1 ? " in units of " + std::to_string(unit) : ""),
        options.uneven(), unit);
    local_out = segments * partition_->local_size();
  } else {
    const int64_t heads = options.out_features() / unit;
    TORCHTP_CHECK(
        options.segments() == 3 && heads > 2 * kv &&
            (heads - 2 * kv) % kv == 0 && !options.gather_output(),
        kColumn, *group_, "kv_heads (", kv,
        ") needs segments(3), no gather_output, and out_features (",
        options.out_features(), " = ", heads, " heads of ", unit,
        ") holding query heads that are a multiple of the key/value heads "
        "plus twice the key/value heads");
    partition_ = Partition(
        (heads - 2 * kv) * unit, group_->size(), group_->rank(),
        std::string(kColumn) + ": query heads (of " + std::to_string(unit) +
            ")",
        options.uneven(), unit);
    for (const auto& r : shard_ranges(
             shard_spec("weight"), options.out_features(), group_->size(),
             group_->rank(), kColumn)) {
      local_out += r.length;
    }
  }
  const auto dtype = detail::dtype_or_default(options.dtype());
  register_weight_and_bias(
      *this, weight, bias, {local_out, options.in_features()}, local_out,
      options.bias(), dtype);
  reset_parameters();  detail::keep_int8_after_reset(*this, weight, weight_scale);
}

void ColumnParallelLinearImpl::reset_parameters() {
  detail::linear_init_shard(
      weight, bias, shard_spec("weight"), shard_spec("bias"), *group_);
}

void ColumnParallelLinearImpl::load_full_weights(
    const torch::Tensor& w, const torch::Tensor& b) {
  load_weight_and_bias(kColumn, *this, weight, bias, w, b, *group_);
}

torch::Tensor ColumnParallelLinearImpl::forward(const torch::Tensor& input) {
  check_layer_input(
      kColumn, input, options.in_features(), "in_features", weight, *group_);
  auto y = detail::copy_to_tp_region_and_linear(
      input, forward_weight(),
      options.skip_bias_add() ? torch::Tensor() : forward_bias(), *group_,
      weight_scale);
  if (!options.gather_output()) {
    return y;
  }
  const int64_t segments = options.segments();
  y = gather_from_tp_region(y, *group_, partition_->scaled(segments));
  if (segments == 1) {
    return y;
  }
  // The gather is rank-major; the full output is block-major.
  return full_from_gathered(y, -1, segments, *partition_);
}

ShardSpec ColumnParallelLinearImpl::shard_spec(const std::string&) const {
  return {
      0,
      options.segments(),
      options.out_features(),
      options.uneven(),
      options.split_unit(),
      options.kv_heads()};
}

torch::Tensor ColumnParallelLinearImpl::forward_weight() const {
  return detail::sum_shared_heads(weight, shard_spec("weight"), *group_);
}

torch::Tensor ColumnParallelLinearImpl::forward_bias() const {
  return detail::sum_shared_heads(bias, shard_spec("bias"), *group_);
}

void ColumnParallelLinearImpl::quantize_int8() {
  weight_scale = detail::quantize_parameter(
      *this, weight, *group_, /*row_split=*/false, kColumn);
}

void ColumnParallelLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "torchtp::ColumnParallelLinear(in_features="
         << options.in_features() << ", out_features=" << options.out_features()
         << " (" << weight.size(0) << " on this rank)"
         << ", bias=" << std::boolalpha << options.bias()
         << ", gather_output=" << options.gather_output()
         << ", skip_bias_add=" << options.skip_bias_add();
  if (options.segments() > 1) {
    stream << ", segments=" << options.segments();
  }
  if (options.kv_heads() > 0) {
    stream << ", kv_heads=" << options.kv_heads();
  }
  if (options.uneven()) {
    stream << ", uneven=true";
  }
  stream << ", rank=" << group_->rank() << ", world_size=" << group_->size()
         << ")";
}

// ---------------------------------------------------------------------------
// RowParallelLinear

RowParallelLinearImpl::RowParallelLinearImpl(RowParallelLinearOptions options_)
    : options(std::move(options_)) {
  reset();
}

void RowParallelLinearImpl::reset() {
  group_ = detail::group_or_default(options.group());
  check_positive(kRow, options.in_features(), options.out_features(), *group_);
  const int64_t unit = options.split_unit();
  TORCHTP_CHECK(
      unit >= 1 && options.in_features() % unit == 0, kRow, *group_,
      "in_features (", options.in_features(),
      ") is not a whole number of split units of ", unit);
  partition_ = Partition(
      options.in_features(), group_->size(), group_->rank(),
      std::string(kRow) + ": in_features" +
          (unit > 1 ? " in units of " + std::to_string(unit) : ""),
      options.uneven(), unit);
  const auto dtype = detail::dtype_or_default(options.dtype());
  register_weight_and_bias(
      *this, weight, bias, {options.out_features(), partition_->local_size()},
      options.out_features(), options.bias(), dtype);
  reset_parameters();  detail::keep_int8_after_reset(*this, weight, weight_scale);
}

void RowParallelLinearImpl::reset_parameters() {
  detail::linear_init_shard(
      weight, bias, shard_spec("weight"), shard_spec("bias"), *group_);
}

void RowParallelLinearImpl::load_full_weights(
    const torch::Tensor& w, const torch::Tensor& b) {
  load_weight_and_bias(kRow, *this, weight, bias, w, b, *group_);
}

torch::Tensor RowParallelLinearImpl::forward(const torch::Tensor& input) {
  if (options.input_is_parallel()) {
    check_layer_input(
        kRow, input, partition_->local_size(),
        "in_features / world_size, input_is_parallel", weight, *group_);
  } else {
    check_layer_input(
        kRow, input, options.in_features(), "in_features", weight, *group_);
  }
  auto x = options.input_is_parallel()
               ? input
               : scatter_to_tp_region(input, *group_, *partition_);
  auto partial = detail::linear(x, weight, torch::Tensor(), weight_scale);
  if (!options.reduce_output()) {
    return partial; // the caller reduces it and adds the bias
  }
  // `partial` is a fresh temporary: reduced in place, no copy.
  auto y = detail::reduce_from_tp_region_in_place(partial, *group_);
  // Added after the reduction, once: adding it before would count it
  // world_size times.
  if (bias.defined() && !options.skip_bias_add()) {
    y = y + bias;
  }
  return y;
}

ShardSpec RowParallelLinearImpl::shard_spec(const std::string& name) const {
  return name == "weight"
             ? ShardSpec{1, 1, options.in_features(), options.uneven(), options.split_unit()}
             : ShardSpec::replicated();
}

void RowParallelLinearImpl::quantize_int8() {
  weight_scale = detail::quantize_parameter(
      *this, weight, *group_, /*row_split=*/true, kRow);
}

void RowParallelLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "torchtp::RowParallelLinear(in_features=" << options.in_features()
         << " (" << partition_->local_size() << " on this rank)"
         << ", out_features=" << options.out_features()
         << ", bias=" << std::boolalpha << options.bias()
         << ", input_is_parallel=" << options.input_is_parallel()
         << ", skip_bias_add=" << options.skip_bias_add()
         << (options.uneven() ? ", uneven=true" : "")
         << (options.reduce_output() ? "" : ", reduce_output=false")
         << ", rank=" << group_->rank() << ", world_size=" << group_->size()
         << ")";
}

} // namespace torchtp
