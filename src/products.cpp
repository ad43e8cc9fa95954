#include "detail/products.h"

#include "detail/weight_kernels.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <initializer_list>

namespace torchtp::detail {
namespace {

// The float32 tile of a weight that products convert at once: 4 MiB,
// which stays in L2/L3 while the GEMM reads it, and bounds the temporary
// memory whatever the layer's size.
constexpr int64_t kTileElements = int64_t{1} << 20;

// Calls f(first_row, row_count) for tiles of a [rows, k] matrix's rows of
// about kTileElements elements (4 MiB in float32), in order.
template <typename F>
void for_each_row_tile(int64_t rows, int64_t k, const F& f) {
  const int64_t tile =
      std::max<int64_t>(1, kTileElements / std::max<int64_t>(k, 1));
  for (int64_t j = 0; j < rows; j += tile) {
    f(j, std::min(tile, rows - j));
  }
}

bool records_grad(std::initializer_list<const at::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) {
    return false;
  }
  for (const auto* t : tensors) {
    if (t->defined() && t->requires_grad()) {
      return true;
    }
  }
  return false;
}

int64_t rows_of(const at::Tensor& input) {
  return input.dim() == 0 || input.size(-1) == 0
             ? 0
             : input.numel() / input.size(-1);
}

std::vector<int64_t> output_shape(const at::Tensor& input, int64_t n) {
  auto shape = input.sizes().vec();
  shape.back() = n;
  return shape;
}

const float* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<float>() : nullptr;
}

// Few rows through the hand kernels, the weight widened in registers.
at::Tensor hand_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const at::Tensor& scale) {
  const int64_t k = input.size(-1), n = weight.size(0);
  const auto w = weight.contiguous();
  const auto b = bias.defined() ? bias.to(at::kFloat).contiguous() : bias;
  const Isa isa = kernel_choice().isa;
  if (isa == Isa::avx512_bf16 && w.scalar_type() == at::kBFloat16 &&
      input.scalar_type() == at::kBFloat16) {
    // Both read as stored: no widening of the activations either.
    const auto x = input.reshape({-1, k}).contiguous();
    auto y = at::empty({x.size(0), n}, x.options().dtype(at::kFloat));
    small_rows_gemm_bfloat16(
        reinterpret_cast<const uint16_t*>(x.data_ptr()), x.size(0), k,
        reinterpret_cast<const uint16_t*>(w.data_ptr()), data_or_null(b),
        y.data_ptr<float>(), n);
    return y.view(output_shape(input, n)).to(input.scalar_type());
  }
  const auto x = input.reshape({-1, k}).to(at::kFloat).contiguous();
  const auto s = scale.defined() ? scale.to(at::kFloat).contiguous() : scale;
  auto y = at::empty({x.size(0), n}, x.options());
  const WeightType type = w.scalar_type() == at::kChar ? WeightType::int8
      : w.scalar_type() == at::kBFloat16               ? WeightType::bfloat16
                                                       : WeightType::float32;
  small_rows_gemm(
      isa, x.data_ptr<float>(), x.size(0), k, w.data_ptr(), type,
      data_or_null(s), data_or_null(b), y.data_ptr<float>(), n);
  return y.view(output_shape(input, n)).to(input.scalar_type());
}

// Many rows: the weight widened to float32 a tile of rows at a time, each
// tile's columns of the output by sgemm. No autograd.
at::Tensor tiled_linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const at::Tensor& scale) {
  const int64_t k = input.size(-1), n = weight.size(0);
  const auto x = input.reshape({-1, k}).to(at::kFloat);
  auto y = at::empty({x.size(0), n}, x.options());
  for_each_row_tile(n, k, [&](int64_t j, int64_t t) {
    const auto w = scale.defined()
                       ? dequantize_rows(
                             weight.narrow(0, j, t), scale.narrow(0, j, t),
                             at::kFloat)
                       : weight.narrow(0, j, t).to(at::kFloat);
    auto out = y.narrow(1, j, t); // row stride n: sgemm writes it in place
    if (bias.defined()) {
      at::addmm_out(out, bias.narrow(0, j, t).to(at::kFloat), x, w.t());
    } else {
      at::mm_out(out, x, w.t());
    }
  });
  return y.view(output_shape(input, n)).to(input.scalar_type());
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A bfloat16 linear that records gradients, on a CPU without native
// bfloat16 GEMM: forward through float32 tiles, backward's products in
// float32 too, and only the bfloat16 input and weight kept for backward
// (a float32 copy of the weight kept instead would double its memory).
struct WidenedLinear : torch::autograd::Function<WidenedLinear> {
  static at::Tensor forward(
      AutogradContext* ctx,
      at::Tensor x,
      at::Tensor weight,
      c10::optional<at::Tensor> bias) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["has_bias"] = bias.has_value();
    return tiled_linear(x, weight, bias.value_or(at::Tensor()), at::Tensor());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& weight = saved[1];
    const auto grad = grads[0].reshape({-1, grads[0].size(-1)}).to(at::kFloat);
    at::Tensor grad_x, grad_w, grad_b;
    if (ctx->needs_input_grad(0)) {
      grad_x = grad.mm(weight.to(at::kFloat))
                   .view(output_shape(x, weight.size(1)))
                   .to(x.scalar_type());
    }
    if (ctx->needs_input_grad(1)) {
      grad_w = grad.t()
                   .mm(x.reshape({-1, x.size(-1)}).to(at::kFloat))
                   .to(weight.scalar_type());
    }
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_b = grad.sum(0).to(weight.scalar_type());
    }
    return {grad_x, grad_w, grad_b};
  }
};

} // namespace

at::Tensor linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const at::Tensor& scale) {
  const auto& choice = kernel_choice();
  const int64_t rows = rows_of(input);
  // bfloat16 too where oneDNN has a native bfloat16 GEMM: the hand
  // kernels took 0.41-0.56x its time for 1 to 16 rows of GPT-2's weights
  // (bench_weights, two threads, AMD EPYC Zen 5 with avx512_bf16).
  const bool few_rows = choice.hand_kernels && rows > 0 &&
                        weight.dim() == 2 && rows <= kSmallRows;
  if (weight.scalar_type() == at::kChar) {
    TORCH_CHECK(
        scale.defined() && scale.dim() == 1 && scale.size(0) == weight.size(0),
        "an int8 weight ", weight.sizes(), " needs one scale per row, got ",
        scale.defined() ? c10::str(scale.sizes()) : "none");
    if (records_grad({&input, &bias})) {
      return at::linear(
          input, dequantize_rows(weight, scale, input.scalar_type()), bias);
    }
    // Many rows too (a prefill): through the hand kernels 16 rows at a
    // time, 0.56-0.59x the time of float32 tiles of the weight through sgemm
    // for 128 rows of GPT-2's weights (bench_weights, AMD EPYC Zen 5,
    // avx512); LibTorch alone (TORCHTP_KERNELS=library) takes the tiles.
    return choice.hand_kernels && rows > 0 && weight.dim() == 2
               ? hand_linear(input, weight, bias, scale)
               : tiled_linear(input, weight, bias, scale);
  }
  if (weight.scalar_type() == at::kBFloat16 &&
      input.scalar_type() == at::kBFloat16) {
    const bool grad = records_grad({&input, &weight, &bias});
    if (few_rows && !grad) {
      return hand_linear(input, weight, bias, at::Tensor());
    }
    if (choice.native_bfloat16_gemm) {
      return at::linear(input, weight, bias);
    }
    if (!grad) {
      return tiled_linear(input, weight, bias, at::Tensor());
    }
    return WidenedLinear::apply(
        input, weight,
        bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt);
  }
  // float32: few rows (decoding) through the hand kernels, which read the
  // weight once for all of them and sum each output in one order whatever
  // the row count (a sequence's numbers do not depend on its batch).
  // OpenBLAS's sgemm packs the whole weight on every call and cost five
  // times one row's time for 8 rows; for one row its sgemv read GPT-2's
  // weights at 48-51 GB/s where the AVX-512 kernel reads 60-62
  // (bench_weights, AMD EPYC Zen 5, two threads). The generic kernel
  // (no AVX2) is slower than sgemv for one row and, without FMA, ten times
  // sgemm's time for 8 (121 against 13 ms for GPT-2's weights), so there
  // float32 stays with OpenBLAS. Batch-invariant products take the hand
  // kernels for any number of rows. float64 as LibTorch does it (one row
  // through gemv).
  const auto dtype = input.scalar_type();
  const bool float32 =
      dtype == at::kFloat && weight.scalar_type() == at::kFloat;
  const bool invariant = BatchInvariantProducts::active();
  const bool hand_float32 = choice.isa != Isa::generic;
  if (float32 && choice.hand_kernels && rows > 0 && weight.dim() == 2 &&
      ((rows <= kSmallRows && hand_float32) || invariant) &&
      !records_grad({&input, &weight, &bias})) {
    return hand_linear(input, weight, bias, at::Tensor());
  }
  const bool one_row = rows == 1 && input.numel() > 0 && weight.dim() == 2 &&
                       weight.scalar_type() == dtype &&
                       (dtype == at::kFloat || dtype == at::kDouble);
  if (!one_row) {
    return at::linear(input, weight, bias);
  }
  auto y = bias.defined() ? at::addmv(bias, weight, input.reshape({-1}))
                          : at::mv(weight, input.reshape({-1}));
  return y.view(output_shape(input, weight.size(0)));
}

namespace {
thread_local bool batch_invariant = false;
} // namespace

BatchInvariantProducts::BatchInvariantProducts(bool on)
    : previous_(batch_invariant) {
  batch_invariant = on || previous_;
}

BatchInvariantProducts::~BatchInvariantProducts() {
  batch_invariant = previous_;
}

bool BatchInvariantProducts::active() {
  return batch_invariant;
}

at::Tensor matmul(const at::Tensor& a, const at::Tensor& b) {
  // A few rows (the attention of a decode step) also go through float32:
  // oneDNN's bfloat16 primitives cost more to set up than such products
  // take.
  if (a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16 &&
      (!kernel_choice().native_bfloat16_gemm ||
       (a.dim() >= 2 && a.size(-2) <= kAttentionRowsThroughFloat32))) {
    return at::matmul(a.to(at::kFloat), b.to(at::kFloat)).to(at::kBFloat16);
  }
  return at::matmul(a, b);
}

at::Tensor dequantize_rows(
    const at::Tensor& q, const at::Tensor& scale, c10::ScalarType dtype) {
  return (q.to(at::kFloat) * scale.to(at::kFloat).unsqueeze(1)).to(dtype);
}

at::Tensor row_absmax(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2, "row_absmax: expected a matrix, got ", w.sizes());
  auto out = at::empty({w.size(0)}, w.options().dtype(at::kFloat));
  for_each_row_tile(w.size(0), w.size(1), [&](int64_t j, int64_t t) {
    out.narrow(0, j, t).copy_(
        at::amax(at::abs(w.narrow(0, j, t).to(at::kFloat)), {1}));
  });
  return out;
}

std::pair<at::Tensor, at::Tensor> quantize_rows(
    const at::Tensor& w, const at::Tensor& absmax) {
  const auto amax = absmax.defined() ? absmax.to(at::kFloat) : row_absmax(w);
  TORCH_CHECK(
      amax.dim() == 1 && amax.size(0) == w.size(0),
      "quantize_rows: one absmax per row of ", w.sizes(), ", got ",
      amax.sizes());
  const auto scale =
      at::where(amax > 0, amax / 127.0, at::ones_like(amax)).contiguous();
  auto q = at::empty(w.sizes(), w.options().dtype(at::kChar));
  for_each_row_tile(w.size(0), w.size(1), [&](int64_t j, int64_t t) {
    q.narrow(0, j, t).copy_(
        at::clamp(
            at::round(
                w.narrow(0, j, t).to(at::kFloat) /
                scale.narrow(0, j, t).unsqueeze(1)),
            -127, 127)
            .to(at::kChar));
  });
  return {q, scale};
}

} // namespace torchtp::detail
