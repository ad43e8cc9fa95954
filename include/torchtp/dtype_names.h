#pragma once

/// Dtype names as torchtp's programs, flags and Hugging Face's config.json
/// spell them.

#include <c10/util/Exception.h>
#include <torch/types.h>

#include <string>

namespace torchtp {

/// "float32", "float64", "bfloat16" or "float16" (also "float", "double",
/// "half") as a dtype; any other name is a c10::Error that names the
/// accepted ones.
inline torch::Dtype dtype_from_name(const std::string& name) {
  if (name == "float32" || name == "float") {
    return torch::kFloat;
  }
  if (name == "float64" || name == "double") {
    return torch::kDouble;
  }
  if (name == "bfloat16") {
    return torch::kBFloat16;
  }
  if (name == "float16" || name == "half") {
    return torch::kHalf;
  }
  TORCH_CHECK(
      false, "torchtp: unknown dtype '", name,
      "': expected float32, float64, bfloat16 or float16");
}

/// The name dtype_from_name reads back: "float32", "float64", "bfloat16",
/// "float16"; other dtypes as c10 names them.
inline std::string dtype_name(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat:
      return "float32";
    case torch::kDouble:
      return "float64";
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kHalf:
      return "float16";
    default:
      return c10::toString(dtype);
  }
}

} // namespace torchtp
