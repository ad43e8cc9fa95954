#pragma once

// The MLP's nonlinearity over rows of float32 or bfloat16 values, for
// inference (no gradients). LibTorch 1.13 (its default AVX2 kernels) takes
// 74 us for GELU's tanh form over 8 rows of 3072 float32 values and 157 us
// in bfloat16: 1.9 ms of each batch-8 bfloat16 decode step of GPT-2 small.
// Both forms here are x * sigmoid(a(x)): one vector exponential (glibc's
// libmvec) and one division per element, 0.19x LibTorch's time for the
// tanh form and 0.6x for SiLU at 8 rows of 3072 (0.13x and 0.4x in
// bfloat16; AMD EPYC Zen 5, AVX-512). The exact GELU stays LibTorch's: its
// erf took half the time of libmvec's erfc at 8 rows. Compiled without
// LibTorch's headers; the instruction set is chosen at run time as the
// weight kernels' is.

#include "detail/weight_kernels.h"

#include <cstdint>

namespace torchtp::detail {

/// What `activation_rows` computes.
enum class ActivationKernel {
  /// GELU's tanh form, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x +
  /// 0.044715 x^3), computed as x / (1 + exp(-2u)).
  gelu_tanh,
  /// x * sigmoid(x) = x / (1 + exp(-x)).
  silu,
};

/// y[r, i] = act(x[r, i]), times up[r, i] when `up` is given (a gated MLP's
/// two halves), for r < rows and i < n. x's and up's rows are `stride`
/// elements apart (a gated MLP reads both halves of one [rows, 2n]
/// tensor); y is [rows, n] contiguous. Computed in float32; in bfloat16
/// (the `uint16_t` bits) the activation is rounded to bfloat16 before the
/// product and the product again, as LibTorch's two bfloat16 operations
/// round. Every element takes the same vector instructions whatever its
/// place in the row, so a row's result does not depend on the others.
/// Splits the rows over LibTorch's intra-op threads.
void activation_rows(
    Isa isa,
    ActivationKernel act,
    const float* x,
    const float* up,
    int64_t stride,
    float* y,
    int64_t rows,
    int64_t n);
void activation_rows(
    Isa isa,
    ActivationKernel act,
    const uint16_t* x,
    const uint16_t* up,
    int64_t stride,
    uint16_t* y,
    int64_t rows,
    int64_t n);

} // namespace torchtp::detail
