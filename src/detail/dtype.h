#pragma once

#include <c10/core/ScalarType.h>

namespace torchtp::detail {

/// bfloat16 or float16: too few mantissa bits to draw initial weights in or
/// to normalise and sum in, so torchtp does those in float32 and rounds.
inline bool is_reduced_precision(c10::ScalarType dtype) {
  return dtype == c10::kBFloat16 || dtype == c10::kHalf;
}

/// The dtype torchtp computes in for values stored as `dtype`: float32 for a
/// reduced-precision dtype, `dtype` itself otherwise.
inline c10::ScalarType compute_dtype(c10::ScalarType dtype) {
  return is_reduced_precision(dtype) ? c10::kFloat : dtype;
}

} // namespace torchtp::detail
