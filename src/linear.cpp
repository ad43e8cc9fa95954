#include "torchtp/linear.h"

#include "detail/check.h"
#include "detail/dtype.h"
#include "detail/options.h"
#include "detail/shard_init.h"
#include "torchtp/mappings.h"

namespace torchtp {
namespace {

constexpr const char* kColumn = "torchtp::ColumnParallelLinear";
constexpr const char* kRow = "torchtp::RowParallelLinear";

// Shape and dtype check at the entry of forward: names both shapes and the
// rank, so a user knows which rank disagreed and with what.
void check_input(
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
  TORCHTP_CHECK(
      input.scalar_type() == weight.scalar_type(), layer, g,
      "expected input dtype ", weight.scalar_type(), " (the weight's) but got ",
      input.scalar_type(), " for input of shape ", input.sizes());
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
  const int64_t segments = options.segments();
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
  partition_ = Partition(
      options.out_features() / segments, group_->size(), group_->rank(),
      std::string(kColumn) + ": out_features" +
          (segments > 1 ? " / segments" : "") +
          (unit > 1 ? " in units of " + std::to_string(unit) : ""),
      options.uneven(), unit);
  const int64_t local_out = segments * partition_->local_size();
  const auto dtype = detail::dtype_or_default(options.dtype());
  register_weight_and_bias(
      *this, weight, bias, {local_out, options.in_features()}, local_out,
      options.bias(), dtype);
  reset_parameters();
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
  check_input(
      kColumn, input, options.in_features(), "in_features", weight, *group_);
  auto y = detail::copy_to_tp_region_and_linear(
      input, weight, options.skip_bias_add() ? torch::Tensor() : bias, *group_);
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
      0, options.segments(), options.out_features(), options.uneven(),
      options.split_unit()};
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
  reset_parameters();
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
    check_input(
        kRow, input, partition_->local_size(),
        "in_features / world_size, input_is_parallel", weight, *group_);
  } else {
    check_input(
        kRow, input, options.in_features(), "in_features", weight, *group_);
  }
  auto x = options.input_is_parallel()
      ? input
      : scatter_to_tp_region(input, *group_, *partition_);
  auto partial = detail::linear(x, weight, torch::Tensor());
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
      ? ShardSpec{
            1, 1, options.in_features(), options.uneven(),
            options.split_unit()}
      : ShardSpec::replicated();
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
