#pragma once

#include "torchtp/reduce_op.h"

#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <sstream>
#include <string>

namespace torchtp::detail {

/// The collectives a communicator carries, as they travel in a signature.
enum class Op : uint32_t {
  join = 1,
  barrier,
  all_reduce,
  all_gather,
  reduce_scatter,
  broadcast,
};

inline const char* op_name(uint32_t op) {
  switch (static_cast<Op>(op)) {
    case Op::join:
      return "join";
    case Op::barrier:
      return "barrier";
    case Op::all_reduce:
      return "all_reduce";
    case Op::all_gather:
      return "all_gather";
    case Op::reduce_scatter:
      return "reduce_scatter";
    case Op::broadcast:
      return "broadcast";
  }
  return "unknown";
}

inline const char* reduce_name(int32_t op) {
  switch (static_cast<ReduceOp>(op)) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::max:
      return "max";
    case ReduceOp::min:
      return "min";
  }
  return "?";
}

/// What a rank is about to do; every member of a group must pass the same.
/// The shared-memory communicator keeps it in the segment, the Gloo one
/// exchanges it before each collective: ranks that call different
/// collectives, or the same one with different sizes, then all raise instead
/// of corrupting data (or Gloo aborting the process).
struct Signature {
  uint32_t op = 0;
  int32_t dtype = -1;
  int32_t reduce = -1;
  int32_t root = -1;
  uint64_t bytes = 0;

  static Signature of(
      Op op,
      c10::ScalarType dtype,
      int64_t bytes,
      c10::optional<ReduceOp> reduce = c10::nullopt,
      int root = -1) {
    Signature s;
    s.op = static_cast<uint32_t>(op);
    s.dtype = static_cast<int32_t>(dtype);
    s.reduce = reduce ? static_cast<int32_t>(*reduce) : -1;
    s.root = root;
    s.bytes = static_cast<uint64_t>(bytes);
    return s;
  }
  static Signature of(Op op) {
    Signature s;
    s.op = static_cast<uint32_t>(op);
    return s;
  }

  bool operator==(const Signature& o) const {
    return op == o.op && dtype == o.dtype && reduce == o.reduce &&
           root == o.root && bytes == o.bytes;
  }
  bool operator!=(const Signature& o) const {
    return !(*this == o);
  }

  /// "all_reduce of 16 bytes of Float (sum)".
  std::string describe() const {
    std::ostringstream s;
    s << op_name(op);
    if (op != static_cast<uint32_t>(Op::barrier) &&
        op != static_cast<uint32_t>(Op::join)) {
      s << " of " << bytes << " bytes of "
        << c10::toString(static_cast<c10::ScalarType>(dtype));
    }
    if (reduce >= 0) {
      s << " (" << reduce_name(reduce) << ")";
    }
    if (root >= 0) {
      s << " from root " << root;
    }
    return s.str();
  }

  /// The message of every communicator when ranks disagree: names both calls.
  std::string mismatch(int other_rank, const Signature& theirs) const {
    return "ranks called different collectives: this rank called " +
           describe() + ", rank " + std::to_string(other_rank) + " called " +
           theirs.describe() +
           ". Every rank of a group must make the same collectives in the "
           "same order with the same sizes";
  }
};

} // namespace torchtp::detail
