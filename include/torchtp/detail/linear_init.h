#pragma once

#include <torch/types.h>

#include <cstdint>
#include <utility>

namespace torchtp::detail {

/// The full weight `[out, in]` and bias `[out]` (undefined without bias) that
/// `torch::nn::Linear(in, out)` would draw from the global generator now.
/// Reduced-precision dtypes are drawn in float32 and rounded, as
/// `torch::nn::Linear(...)->to(dtype)` would give. Every layer draws its full
/// weight this way and keeps its slice: the same seed gives the same model at
/// every tensor-parallel degree.
std::pair<torch::Tensor, torch::Tensor> linear_init(
    int64_t in_features, int64_t out_features, bool bias, torch::Dtype dtype);

} // namespace torchtp::detail
