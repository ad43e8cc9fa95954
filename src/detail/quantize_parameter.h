#pragma once

#include "torchtp/group.h"

#include <torch/nn/module.h>

namespace torchtp::detail {

/// The layers' quantize_int8: `weight` (a parameter of `module`) becomes
/// int8 rows in place, and their float32 scales the buffer "weight_scale"
/// of `module`, which is returned. `row_split`: each rank holds a part of
/// every row, and the row's largest magnitude is all-reduced over `group`
/// so the parts share one scale. Raises, naming `layer`, when the weight is
/// not floating point (quantized already).
at::Tensor quantize_parameter(
    torch::nn::Module& module,
    at::Tensor& weight,
    const Group& group,
    bool row_split,
    const char* layer);

/// The end of an int8 layer's reset() (which clone() calls on a copy of
/// the layer before copying its tensors): `weight`, just made again in
/// floating point, becomes int8 zeros and "weight_scale" a buffer of ones
/// again, so the copy holds the same tensors as the original. Does nothing
/// for a layer never quantized (`weight_scale` undefined).
void keep_int8_after_reset(
    torch::nn::Module& module,
    at::Tensor& weight,
    at::Tensor& weight_scale);

} // namespace torchtp::detail
