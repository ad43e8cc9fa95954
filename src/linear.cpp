#include "torchtp/linear.h"

#include "torchtp/detail/check.h"
#include "torchtp/detail/dtype.h"
#include "torchtp/detail/linear_init.h"
#include "torchtp/detail/options.h"
#include "torchtp/mappings.h"

#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>

#include <cmath>

namespace torchtp {
namespace detail {

std::pair<torch::Tensor, torch::Tensor> linear_init(
    int64_t in_features, int64_t out_features, bool bias, torch::Dtype dtype) {
  torch::NoGradGuard no_grad;
  const auto draw = compute_dtype(dtype);
  // The same draws, in the same order, as torch::nn::LinearImpl: the weight
  // first, then the bias from the weight's fan-in.
  auto w = torch::empty({out_features, in_features}, draw);
  torch::nn::init::kaiming_uniform_(w, std::sqrt(5));
  torch::Tensor b;
  if (bias) {
    b = torch::empty({out_features}, draw);
    const auto fan_in =
        std::get<0>(torch::nn::init::_calculate_fan_in_and_fan_out(w));
    const auto bound = 1 / std::sqrt(fan_in);
    torch::nn::init::uniform_(b, -bound, bound);
  }
  if (draw != dtype) {
    w = w.to(dtype);
    b = b.defined() ? b.to(dtype) : b;
  }
  return {w, b};
}

} // namespace detail

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
}

void check_full(
    const char* layer,
    const char* what,
    const torch::Tensor& given,
    torch::IntArrayRef expected,
    const Group& g) {
  TORCHTP_CHECK(
      given.defined() && given.sizes() == expected,
      std::string(layer) + "::load_full_weights", g, "expected full ", what,
      " of shape ", expected, " but got ",
      given.defined() ? c10::str(given.sizes()) : "undefined");
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
  partition_ = Partition(
      options.out_features() / segments, group_->size(), group_->rank(),
      std::string(kColumn) + ": out_features" +
          (segments > 1 ? " / segments" : ""));
  const int64_t local_out = segments * partition_->local_size();
  const auto dtype = detail::dtype_or_default(options.dtype());
  register_weight_and_bias(
      *this, weight, bias, {local_out, options.in_features()}, local_out,
      options.bias(), dtype);
  reset_parameters();
}

void ColumnParallelLinearImpl::reset_parameters() {
  auto [w, b] = detail::linear_init(
      options.in_features(), options.out_features(), options.bias(),
      weight.scalar_type());
  load_full_weights(w, b);
}

void ColumnParallelLinearImpl::load_full_weights(
    const torch::Tensor& w, const torch::Tensor& b) {
  check_full(
      kColumn, "weight", w, {options.out_features(), options.in_features()},
      *group_);
  torch::NoGradGuard no_grad;
  const std::string what = std::string(kColumn) + ": out_features";
  weight.copy_(shard_of(w, shard_spec("weight"), *group_, what));
  if (bias.defined()) {
    check_full(kColumn, "bias", b, {options.out_features()}, *group_);
    bias.copy_(shard_of(b, shard_spec("bias"), *group_, what));
  } else {
    TORCHTP_CHECK(
        !b.defined(), std::string(kColumn) + "::load_full_weights", *group_,
        "got a bias for a layer built with bias(false)");
  }
}

torch::Tensor ColumnParallelLinearImpl::forward(const torch::Tensor& input) {
  check_input(
      kColumn, input, options.in_features(), "in_features", weight, *group_);
  auto y = detail::copy_to_tp_region_and_linear(
      input, weight, options.skip_bias_add() ? torch::Tensor() : bias, *group_);
  if (!options.gather_output()) {
    return y;
  }
  y = gather_from_tp_region(y, *group_);
  const int64_t segments = options.segments();
  if (segments == 1) {
    return y;
  }
  // The gather is rank-major [r0: s0 s1 .., r1: s0 s1 ..]; the full output is
  // block-major [s0: r0 r1 .., s1: ..].
  TORCH_INTERNAL_ASSERT(partition_->is_even(), "uneven segments not built");
  auto lead = y.sizes().vec();
  lead.pop_back();
  auto shape = lead;
  shape.insert(
      shape.end(), {group_->size(), segments, partition_->local_size()});
  lead.push_back(options.out_features());
  return y.reshape(shape).transpose(-3, -2).reshape(lead);
}

ShardSpec ColumnParallelLinearImpl::shard_spec(const std::string&) const {
  return {0, options.segments()};
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
  partition_ = Partition(
      options.in_features(), group_->size(), group_->rank(),
      std::string(kRow) + ": in_features");
  const auto dtype = detail::dtype_or_default(options.dtype());
  register_weight_and_bias(
      *this, weight, bias, {options.out_features(), partition_->local_size()},
      options.out_features(), options.bias(), dtype);
  reset_parameters();
}

void RowParallelLinearImpl::reset_parameters() {
  auto [w, b] = detail::linear_init(
      options.in_features(), options.out_features(), options.bias(),
      weight.scalar_type());
  load_full_weights(w, b);
}

void RowParallelLinearImpl::load_full_weights(
    const torch::Tensor& w, const torch::Tensor& b) {
  check_full(
      kRow, "weight", w, {options.out_features(), options.in_features()},
      *group_);
  torch::NoGradGuard no_grad;
  weight.copy_(partition_->narrow(w, 1));
  if (bias.defined()) {
    check_full(kRow, "bias", b, {options.out_features()}, *group_);
    bias.copy_(b);
  } else {
    TORCHTP_CHECK(
        !b.defined(), std::string(kRow) + "::load_full_weights", *group_,
        "got a bias for a layer built with bias(false)");
  }
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
  auto x = options.input_is_parallel() ? input
                                       : scatter_to_tp_region(input, *group_);
  auto partial = torch::nn::functional::linear(x, weight);
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
  return name == "weight" ? ShardSpec{1, 1} : ShardSpec{-1, 1};
}

void RowParallelLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "torchtp::RowParallelLinear(in_features=" << options.in_features()
         << " (" << partition_->local_size() << " on this rank)"
         << ", out_features=" << options.out_features()
         << ", bias=" << std::boolalpha << options.bias()
         << ", input_is_parallel=" << options.input_is_parallel()
         << ", skip_bias_add=" << options.skip_bias_add()
         << ", rank=" << group_->rank() << ", world_size=" << group_->size()
         << ")";
}

} // namespace torchtp
