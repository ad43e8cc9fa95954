#pragma once

// The matrix products of every layer and block, by weight format: float32
// and float64 as LibTorch does them (one row through gemv), except float32
// products of 1 to kSmallRows rows (2 to kSmallRows with the generic
// kernel), which the hand kernels do; bfloat16
// weights through the hand kernels for few rows (decoding) and through
// float32 tiles of the weight, or oneDNN's native bfloat16 GEMM, for many
// (prefill, training); int8 weights through the hand kernels for any
// number of rows (float32 tiles without them). weight_kernels.h says
// which path a CPU takes and how to force another.

#include <ATen/core/Tensor.h>

#include <utility>

namespace torchtp::detail {

/// Up to this many activation rows go through the hand kernels; more are
/// a GEMM's work.
constexpr int64_t kSmallRows = 16;
/// bfloat16 matmuls (the attention's) of up to this many rows go through
/// float32 even where oneDNN has a native bfloat16 GEMM: its primitives
/// cost more to set up than such products take.
constexpr int64_t kAttentionRowsThroughFloat32 = 4;

/// `input W^T + bias` (`bias` may be undefined), as `at::linear`. An int8
/// `weight` [n, k] stands for `weight * scale[:, None]` (`scale` float32
/// [n]) and gives outputs of `input`'s dtype (float32 or bfloat16); any
/// other weight has `input`'s dtype and no scale. Differentiable in input,
/// weight and bias (an int8 weight has no gradient).
at::Tensor linear(
    const at::Tensor& input,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const at::Tensor& scale = at::Tensor());

/// While one lives on a thread, float32 products of any number of rows go
/// through the hand kernels (not sgemm for many, nor gemv for one with
/// the generic kernel),
/// which sum each output in the same order whatever the row count, so a
/// row's result does not depend on how many rows share the product
/// (tested bit for bit). OpenBLAS's sgemm gives no such promise: a row
/// alone and among five differ in the last bits. For serving whose results
/// must not depend on the batch. float64, int8 and TORCHTP_KERNELS=library
/// are not covered.
class BatchInvariantProducts {
 public:
  explicit BatchInvariantProducts(bool on = true);
  ~BatchInvariantProducts();
  BatchInvariantProducts(const BatchInvariantProducts&) = delete;
  BatchInvariantProducts& operator=(const BatchInvariantProducts&) = delete;
  static bool active();

 private:
  bool previous_;
};

/// `at::matmul(a, b)`; bfloat16 operands go through float32 where this
/// CPU has no native bfloat16 GEMM (LibTorch's own loop there is tens of
/// times slower). For the attention's products and the linears' backward.
at::Tensor matmul(const at::Tensor& a, const at::Tensor& b);

/// `q * scale[:, None]` in `dtype`.
at::Tensor dequantize_rows(
    const at::Tensor& q, const at::Tensor& scale, c10::ScalarType dtype);

/// Symmetric int8 per row of `w` [n, k]: scale = absmax / 127 and q =
/// round(w / scale) in [-127, 127]. `absmax` [n] (float32) is each row's
/// largest magnitude, which the caller may have taken over several ranks'
/// parts of the rows so every part shares one scale; undefined: `w`'s own.
/// A row of zeros gets scale 1. Returns {q, scale}.
std::pair<at::Tensor, at::Tensor> quantize_rows(
    const at::Tensor& w, const at::Tensor& absmax = at::Tensor());

/// Each row's largest magnitude, in float32.
at::Tensor row_absmax(const at::Tensor& w);

} // namespace torchtp::detail
