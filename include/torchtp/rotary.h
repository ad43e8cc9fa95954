#pragma once

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <string>

namespace torchtp {

/// How rotary frequencies are stretched for contexts longer than the
/// model was trained on (Hugging Face's `rope_scaling`).
enum class RopeScalingType {
  none,
  /// Every frequency divided by `factor` (position interpolation).
  linear,
  /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, the
  /// band between `low_freq_factor` and `high_freq_factor` blended.
  llama3,
};

/// Options of rotary position embeddings (RoPE).
struct RotaryOptions {
  /// The base of the frequencies, `theta^(-2i / rotary_dim)`.
  TORCH_ARG(double, theta) = 10000.0;
  TORCH_ARG(RopeScalingType, scaling) = RopeScalingType::none;
  TORCH_ARG(double, factor) = 1.0;
  /// llama3 only.
  TORCH_ARG(double, low_freq_factor) = 1.0;
  TORCH_ARG(double, high_freq_factor) = 4.0;
  TORCH_ARG(int64_t, original_max_position_embeddings) = 8192;
};

/// The `head_dim / 2` inverse frequencies of `options`, in float64, scaling
/// applied: `inv_freq[i] = theta^(-2i / head_dim)`, then stretched as
/// `options.scaling()` says. Raises a `c10::Error` for an odd `head_dim` or
/// scaling parameters that mean nothing (a factor below 1, llama3's
/// `high_freq_factor` not above `low_freq_factor`).
torch::Tensor rotary_inverse_frequencies(
    int64_t head_dim, const RotaryOptions& options);

/// Rotates `x` `[batch, heads, seq, head_dim]` (queries or keys, any heads)
/// by the angles of `positions` (`[batch, seq]` or `[seq]`, int64) in Hugging
/// Face's "rotate half" convention: the first and second halves of each
/// head are the two coordinates of each rotated pair,
/// `x * cos + rotate_half(x) * sin` with `rotate_half(x) = [-x2, x1]`. The
/// angles `position * inv_freq` and their cosines and sines are computed in
/// float64 and rounded to `x`'s dtype.
torch::Tensor apply_rotary(
    const torch::Tensor& x,
    const torch::Tensor& positions,
    const torch::Tensor& inverse_frequencies);

} // namespace torchtp
