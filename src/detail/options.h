#pragma once

#include "torchtp/group.h"

#include <c10/util/Optional.h>
#include <torch/types.h>

namespace torchtp::detail {

/// The group an Options struct names, else the default group.
inline Group group_or_default(const c10::optional<Group>& group) {
  return group.has_value() ? *group : default_group();
}

/// The dtype an Options struct names, else torch's default dtype.
inline torch::Dtype dtype_or_default(const c10::optional<torch::Dtype>& dtype) {
  return dtype.has_value()
             ? *dtype
             : c10::typeMetaToScalarType(torch::get_default_dtype());
}

} // namespace torchtp::detail
