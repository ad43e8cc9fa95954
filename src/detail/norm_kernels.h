#pragma once

// Hugging Face's LlamaRMSNorm over rows of float32 or bfloat16 values, for
// inference (no gradients), as one pass instead of LibTorch's eight
// operations (widen, square, mean, add, rsqrt, multiply, round, scale),
// which took 13-20 us for one to eight rows of 896 values: up to a
// millisecond of each Qwen2.5-0.5B decode step, with its 49 norms.
// Compiled without LibTorch's headers.

#include <cstdint>

namespace torchtp::detail {

/// y[r] = w * round(x[r] / sqrt(mean(x[r]^2) + eps)) for r < rows, rows of
/// n values, x, w and y contiguous and of one dtype: float32, or bfloat16
/// (the `uint16_t` bits), where `round` is to bfloat16 and the product with
/// the weight is rounded again, as Hugging Face's two bfloat16 operations
/// round. The mean of squares is summed in float32 in one fixed order per
/// row, so a row's result does not depend on the others. Splits the rows
/// over LibTorch's intra-op threads.
void rms_norm_rows(
    const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps);
void rms_norm_rows(
    const uint16_t* x,
    const uint16_t* w,
    uint16_t* y,
    int64_t rows,
    int64_t n,
    float eps);

} // namespace torchtp::detail
