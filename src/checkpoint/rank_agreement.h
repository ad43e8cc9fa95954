#pragma once

// Errors agreed across ranks: a collective operation that fails on one rank
// fails on all of them, together, instead of leaving the others waiting in
// a collective for a rank that gave up.

#include "detail/check.h"
#include "torchtp/group.h"

#include <ATen/ops/full.h>
#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace torchtp::detail {

/// Runs `f`, returning its error message ("" when it succeeded).
template <typename F>
std::string attempt(F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

/// Collective over `g`: every rank learns whether any rank failed, and which
/// (the lowest), then all raise together. `error` is this rank's failure
/// ("" when it did not fail): the failing rank raises it, the others raise
/// "<what>: rank k failed".
inline void agree(
    const Group& g, const std::string& error, const std::string& what) {
  auto first = at::full({1}, error.empty() ? g.size() : g.rank(), at::kLong);
  g.all_reduce(first, ReduceOp::min);
  const int64_t failed = first.item<int64_t>();
  if (failed == g.size()) {
    return;
  }
  TORCH_CHECK(error.empty(), with_rank_label(error, g.rank_label()));
  TORCHTP_CHECK(
      false, what, g, "rank ", failed, " failed (its message says why)");
}

} // namespace torchtp::detail
