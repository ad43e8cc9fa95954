#pragma once

// Rotary positions (Hugging Face's "rotate half") for inference, in one
// pass over the queries or keys instead of LibTorch's fifteen operations
// (angles, cat, cos, sin, two casts, negate, cat, two products, a sum):
// those took ~37 us per layer of a Qwen2.5-0.5B decode step, 5-6% of an
// int8 step. Compiled without LibTorch's headers.

#include <cstdint>

namespace torchtp::detail {

/// Where the rows are: x and y `[batch, heads, seq, head_dim]`, each with
/// its own strides in elements (the last dimension contiguous).
struct RotaryShape {
  int64_t batch, heads, seq, head_dim;
  int64_t x_stride_batch, x_stride_head, x_stride_seq;
  int64_t y_stride_batch, y_stride_head, y_stride_seq;
  /// `positions` is `[batch, seq]`; else `[seq]`, shared by the batch.
  bool positions_per_sequence;
};

/// y = x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1] and
/// the angles position * inv_freq[i % (head_dim / 2)], as
/// torchtp::apply_rotary computes them: the angles, cosines and sines in
/// float64, rounded to x's dtype (bfloat16 through float, as LibTorch's
/// cast); each product rounded to that dtype, then their sum. `T` is
/// float, or bfloat16's bits (`uint16_t`). Splits the positions over
/// LibTorch's intra-op threads when there are many.
template <typename T>
void rotary_rows(
    const T* x,
    const int64_t* positions,
    const double* inv_freq,
    T* y,
    const RotaryShape& shape);

} // namespace torchtp::detail
