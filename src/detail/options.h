#pragma once

#include "torchtp/group.h"

#include <c10/util/Optional.h>
#include <torch/types.h>

#include <type_traits>
#include <utility>

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

template <typename T, typename = void>
struct has_sequence_parallel : std::false_type {};
template <typename T>
struct has_sequence_parallel<
    T,
    std::void_t<decltype(std::declval<T&>().sequence_parallel(true))>>
    : std::true_type {};

/// `part`, the options of a block's part, with the options every block
/// hands down unchanged: the group, the dtype, the uneven rule, and
/// sequence parallelism where the part has it. One place, so that an option
/// shared by the blocks reaches every part.
template <typename Part, typename Whole>
Part with_shared_options(Part part, const Whole& whole) {
  part.group(whole.group()).dtype(whole.dtype()).uneven(whole.uneven());
  if constexpr (has_sequence_parallel<Part>::value) {
    part.sequence_parallel(whole.sequence_parallel());
  }
  return part;
}

} // namespace torchtp::detail
