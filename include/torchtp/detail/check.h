#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

namespace torchtp::detail {

/// "[rank r/ws]": how every torchtp error message ends, so that messages
/// from layers, mappings and communicators cannot drift apart.
inline std::string rank_label(int64_t rank, int64_t world_size) {
  return "[rank " + std::to_string(rank) + "/" + std::to_string(world_size) +
         "]";
}

/// The label of anything that has `rank()` and `size()`: a Group, a
/// communicator, a Partition.
template <typename Ranked>
auto rank_label(const Ranked& ranked)
    -> decltype(ranked.rank(), ranked.size(), std::string()) {
  return rank_label(ranked.rank(), ranked.size());
}

} // namespace torchtp::detail

/// TORCH_CHECK for torchtp: when `cond` is false, raises a `c10::Error`
/// "<component>: <message> [rank r/ws]". `ranked` is the Group (or anything
/// with `rank()` and `size()`) the failing rank belongs to; the message parts
/// are joined as TORCH_CHECK joins them, and only built when the check fails.
///
///   TORCHTP_CHECK(x.dim() == 2, "torchtp::Foo", group,
///                 "expected a 2-D input but got ", x.sizes());
#define TORCHTP_CHECK(cond, component, ranked, ...) \
  TORCH_CHECK(                                      \
      cond,                                         \
      component,                                    \
      ": ",                                         \
      __VA_ARGS__,                                  \
      " ",                                          \
      ::torchtp::detail::rank_label(ranked))
