#pragma once

// The rule "every rank of a group makes the same collectives, in the same
// order, with the same sizes", checked in two depths: always, by the
// communicators (a `Signature`: operation, dtype, bytes), and under
// TORCHTP_DEBUG by the Group (a fingerprint: sequence number, argument,
// shape). Ranks that break it all raise, naming what each called, instead
// of corrupting data, hanging, or (Gloo) aborting the process.

#include "communicator.h"

#include "torchtp/reduce_op.h"

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstdint>
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

/// "all_reduce", "join", ...; "unknown" for a value no Op has.
const char* op_name(uint32_t op);

/// What a rank is about to do; every member of a group must pass the same.
/// The shared-memory communicator keeps it in the segment, the Gloo one
/// exchanges it before each collective.
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
  std::string describe() const;

  /// The message of every communicator when ranks disagree: names both calls.
  std::string mismatch(int other_rank, const Signature& theirs) const;
};

/// TORCHTP_DEBUG's check, made by the Group before collective `op` ("split"
/// and "barrier" too) on `comm`: every rank sends its fingerprint (the
/// collective's sequence number on the group, `op`, its argument `arg`:
/// reduction, dim or root, -1 for none, and the dtype and shape of `t`,
/// which may be null) and raises, on every rank, unless all agree, naming
/// what each rank called. One small all-gather of its own, so ranks that
/// call different collectives, or the same ones in another order, meet here
/// instead of in mismatched data or a hang.
void check_fingerprints(
    Communicator& comm, const char* op, const at::Tensor* t, int64_t arg);

} // namespace torchtp::detail
