#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>

namespace torchtp {

/// Which normalisation a block uses.
enum class NormType {
  /// `(x - mean) / sqrt(var + eps) * weight + bias` (GPT-2).
  layer_norm,
  /// `x / sqrt(mean(x^2) + eps) * weight`, no mean, no bias (Llama).
  rms_norm,
};

/// Options of `Norm`.
struct NormOptions {
  explicit NormOptions(int64_t dim) : dim_(dim) {}

  /// The normalised (last) dim's size.
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(NormType, type) = NormType::layer_norm;
  TORCH_ARG(double, eps) = 1e-5;
  /// LayerNorm only: learn an additive bias (RMSNorm has none).
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(c10::optional<torch::Dtype>, dtype) = c10::nullopt;
};

/// A replicated normalisation over the last dim: LayerNorm (with or without
/// bias) or RMSNorm. Every rank holds the same `weight` (and `bias`).
/// Reduced-precision inputs are normalised in float32 and rounded back
/// before the weight is applied, as Hugging Face's LlamaRMSNorm does;
/// float32 and float64 stay in their dtype. LayerNorm is
/// `torch::layer_norm` itself, so it gives `torch::nn::LayerNorm`'s numbers.
class NormImpl : public torch::nn::Cloneable<NormImpl> {
 public:
  explicit NormImpl(NormOptions options);
  void reset() override;
  /// Ones for the weight, zeros for the bias.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  torch::Tensor forward(const torch::Tensor& x);
  /// `forward` with `weight` and `bias` in place of the parameters (the
  /// same values entering the graph another way, e.g. through
  /// `copy_to_tp_region` under sequence parallelism).
  torch::Tensor forward_with(
      const torch::Tensor& x,
      const torch::Tensor& weight,
      const torch::Tensor& bias) const;

  NormOptions options;
  torch::Tensor weight;
  /// Undefined for RMSNorm and for LayerNorm without bias.
  torch::Tensor bias;
};
TORCH_MODULE(Norm);

} // namespace torchtp
