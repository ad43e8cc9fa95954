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

} // namespace torchtp::detail
