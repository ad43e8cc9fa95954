#include "torchtp/rotary.h"

#include "detail/rotary_kernels.h"
#include "detail/weight_kernels.h"

#include <cmath>

namespace torchtp {
namespace {
constexpr const char* kRotary = "torchtp::rotary";
} // namespace

torch::Tensor rotary_inverse_frequencies(
    int64_t head_dim, const RotaryOptions& o) {
  TORCH_CHECK(
      head_dim > 0 && head_dim % 2 == 0, kRotary, ": head_dim must be even, got ",
      head_dim);
  TORCH_CHECK(o.theta() > 0, kRotary, ": theta must be positive, got ", o.theta());
  auto exponents = torch::arange(0, head_dim, 2, torch::kDouble) / head_dim;
  auto inv_freq = torch::pow(o.theta(), exponents).reciprocal();
  switch (o.scaling()) {
    case RopeScalingType::none:
      return inv_freq;
    case RopeScalingType::linear:
      TORCH_CHECK(
          o.factor() >= 1, kRotary, ": the linear scaling factor must be at "
          "least 1, got ", o.factor());
      return inv_freq / o.factor();
    case RopeScalingType::llama3:
      break;
  }
  TORCH_CHECK(
      o.factor() >= 1 && o.low_freq_factor() > 0 &&
          o.high_freq_factor() > o.low_freq_factor() &&
          o.original_max_position_embeddings() > 0,
      kRotary, ": llama3 scaling needs factor >= 1, 0 < low_freq_factor < "
      "high_freq_factor and original_max_position_embeddings > 0; got factor ",
      o.factor(), ", low_freq_factor ", o.low_freq_factor(),
      ", high_freq_factor ", o.high_freq_factor(),
      ", original_max_position_embeddings ",
      o.original_max_position_embeddings());
  // Wavelengths longer than the original context / low_freq_factor are
  // divided by the factor, shorter than context / high_freq_factor kept,
  // the band between blended linearly in context / wavelength.
  const double context = o.original_max_position_embeddings();
  const double low_wavelen = context / o.low_freq_factor();
  const double high_wavelen = context / o.high_freq_factor();
  auto wavelen = 2 * M_PI / inv_freq;
  auto scaled = torch::where(wavelen > low_wavelen, inv_freq / o.factor(), inv_freq);
  auto smooth = (context / wavelen - o.low_freq_factor()) /
                (o.high_freq_factor() - o.low_freq_factor());
  auto blended = (1 - smooth) * scaled / o.factor() + smooth * scaled;
  auto medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen);
  return torch::where(medium, blended, scaled);
}

torch::Tensor apply_rotary(
    const torch::Tensor& x,
    const torch::Tensor& positions,
    const torch::Tensor& inverse_frequencies) {
  TORCH_CHECK(
      x.dim() == 4 && x.size(3) == 2 * inverse_frequencies.size(0), kRotary,
      ": expected x [batch, heads, seq, ", 2 * inverse_frequencies.size(0),
      "] but got ", x.sizes());
  TORCH_CHECK(
      (positions.dim() == 1 && positions.size(0) == x.size(2)) ||
          (positions.dim() == 2 && positions.size(0) == x.size(0) &&
           positions.size(1) == x.size(2)),
      kRotary, ": expected positions [", x.size(0), ", ", x.size(2), "] or [",
      x.size(2), "] but got ", positions.sizes());
  // At inference, one pass (detail::rotary_rows) with the same roundings.
  const auto dtype = x.scalar_type();
  if ((dtype == torch::kFloat || dtype == torch::kBFloat16) &&
      x.stride(3) == 1 && detail::kernel_choice().hand_kernels &&
      !(torch::GradMode::is_enabled() && x.requires_grad())) {
    const auto pos = positions.to(torch::kLong).contiguous();
    const auto inv = inverse_frequencies.to(torch::kDouble).contiguous();
    // y laid out as LibTorch's elementwise operations would lay it out:
    // heads inside positions where x has them so (a projection's view).
    const auto y = x.stride(1) < x.stride(2)
        ? torch::empty({x.size(0), x.size(2), x.size(1), x.size(3)}, x.options())
              .permute({0, 2, 1, 3})
        : torch::empty(x.sizes(), x.options());
    const detail::RotaryShape shape{
        x.size(0),    x.size(1),    x.size(2),    x.size(3),
        x.stride(0),  x.stride(1),  x.stride(2),  y.stride(0),
        y.stride(1),  y.stride(2),  pos.dim() == 2};
    if (dtype == torch::kFloat) {
      detail::rotary_rows(
          x.data_ptr<float>(), pos.data_ptr<int64_t>(), inv.data_ptr<double>(),
          y.data_ptr<float>(), shape);
    } else {
      detail::rotary_rows(
          reinterpret_cast<const uint16_t*>(x.data_ptr()),
          pos.data_ptr<int64_t>(), inv.data_ptr<double>(),
          reinterpret_cast<uint16_t*>(y.data_ptr()), shape);
    }
    return y;
  }
  // [.., seq, head_dim / 2] angles, in float64 whatever x holds.
  auto angles = positions.to(torch::kDouble).unsqueeze(-1) *
                inverse_frequencies.to(torch::kDouble);
  angles = torch::cat({angles, angles}, -1);
  if (angles.dim() == 3) {
    angles = angles.unsqueeze(1); // [batch, 1, seq, head_dim]
  }
  const auto cos = angles.cos().to(x.scalar_type());
  const auto sin = angles.sin().to(x.scalar_type());
  const int64_t half = x.size(3) / 2;
  auto rotated = torch::cat({-x.narrow(3, half, half), x.narrow(3, 0, half)}, 3);
  return x * cos + rotated * sin;
}

} // namespace torchtp
