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

/// A rank and the size of its group, for checks made where no Group exists
/// (yet): `TORCHTP_CHECK(ok, "torchtp::init", detail::RankOf(r, ws), ...)`.
struct RankOf {
  RankOf(int64_t rank, int64_t size) : rank(rank), size(size) {}
  int64_t rank;
  int64_t size;
};

inline std::string rank_label(const RankOf& r) {
  return rank_label(r.rank, r.size);
}

/// The label of anything that has `rank()` and `size()`: a Group, a
/// communicator, a Partition.
template <typename Ranked>
auto rank_label(const Ranked& ranked)
    -> decltype(ranked.rank(), ranked.size(), std::string()) {
  return rank_label(ranked.rank(), ranked.size());
}

/// `message` ending with `label`: appended unless it ends with it already,
/// as a torchtp error caught and raised again does.
inline std::string with_rank_label(
    const std::string& message, const std::string& label) {
  const bool labelled =
      message.size() >= label.size() &&
      message.compare(message.size() - label.size(), label.size(), label) == 0;
  return labelled ? message : message + " " + label;
}

} // namespace torchtp::detail

/// TORCH_CHECK for torchtp: when `cond` is false, raises a `c10::Error`
/// "<component>: <message> [rank r/ws]". `ranked` is the Group (anything
/// with `rank()` and `size()`, or a `detail::RankOf`) of the failing rank; the
/// message parts are joined as TORCH_CHECK joins them, and only built when the
/// check fails.
///
///   TORCHTP_CHECK(x.dim() == 2, "torchtp::Foo", group,
///                 "expected a 2-D input but got ", x.sizes());
#define TORCHTP_CHECK(cond, component, ranked, ...) \
  TORCH_CHECK(                                      \
      cond, component, ": ", __VA_ARGS__, " ",      \
      ::torchtp::detail::rank_label(ranked))
