#include "torchtp/quantize.h"

#include "detail/check.h"
#include "detail/products.h"
#include "detail/quantize_parameter.h"
#include "torchtp/embedding.h"
#include "torchtp/linear.h"
#include "torchtp/reduce_op.h"

namespace torchtp {
namespace detail {

at::Tensor quantize_parameter(
    torch::nn::Module& module,
    at::Tensor& weight,
    const Group& group,
    bool row_split,
    const char* layer) {
  TORCHTP_CHECK(
      weight.defined() && weight.dim() == 2 &&
          weight.is_floating_point(),
      layer, group, "quantize_int8: expected a floating-point weight, got ",
      weight.defined() ? c10::toString(weight.scalar_type()) : "none",
      " (quantized already?)");
  at::NoGradGuard no_grad;
  auto absmax = row_absmax(weight);
  if (row_split && group.size() > 1) {
    group.all_reduce(absmax, ReduceOp::max);
  }
  auto [q, scale] = quantize_rows(weight, absmax);
  // The parameter keeps its identity (the module's dictionary and any
  // alias such as a tied output layer see the int8 data); the float
  // storage is freed here.
  weight.set_requires_grad(false);
  weight.set_data(q);
  return module.register_buffer("weight_scale", scale);
}

void keep_int8_after_reset(
    torch::nn::Module& module,
    at::Tensor& weight,
    at::Tensor& weight_scale) {
  if (!weight_scale.defined()) {
    return;
  }
  at::NoGradGuard no_grad;
  weight.set_requires_grad(false);
  weight.set_data(at::zeros(weight.sizes(), weight.options().dtype(at::kChar)));
  weight_scale = module.register_buffer(
      "weight_scale", at::ones({weight.size(0)}, at::kFloat));
}

} // namespace detail

void quantize_int8(torch::nn::Module& module) {
  auto visit = [](torch::nn::Module& m) {
    if (auto* c = dynamic_cast<ColumnParallelLinearImpl*>(&m)) {
      c->quantize_int8();
    } else if (auto* r = dynamic_cast<RowParallelLinearImpl*>(&m)) {
      r->quantize_int8();
    } else if (auto* e = dynamic_cast<VocabParallelEmbeddingImpl*>(&m)) {
      e->quantize_int8();
    }
  };
  visit(module);
  for (const auto& child : module.modules(/*include_self=*/false)) {
    visit(*child);
  }
}

} // namespace torchtp
