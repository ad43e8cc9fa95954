#pragma once

#include "torchtp/partition.h"
#include "torchtp/reduce_op.h"
#include "torchtp/work.h"

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include <string>

namespace torchtp {
namespace detail {
class Communicator;
struct GroupAccess;
} // namespace detail

/// A set of ranks and the collectives between them: the only thing above the
/// communicators that knows about ranks. A small value type; copies share the
/// same communicator.
///
/// Every collective is called by every rank of the group, in the same order,
/// with tensors of the same shape and dtype. A group of one rank does no
/// communication. Every collective fails with a `c10::Error` naming the rank
/// after the group's timeout (`TORCHTP_TIMEOUT_S`) or when a peer dies: never
/// a hang. Set `TORCHTP_DEBUG=1` to check before each collective (and
/// barrier and split) that every rank calls the same one, with the same
/// argument, shape and dtype, at the same sequence number of the group: one
/// extra small all-gather; ranks that disagree all raise, naming what each
/// rank called.
///
/// Example:
/// ```
///   torchtp::Group g = torchtp::init_from_env();
///   auto x = torch::full({2}, g.rank());
///   g.all_reduce(x);                        // every rank: sum of the ranks
///   auto y = g.all_gather(x, /*dim=*/0);    // [2 * size]
/// ```
class Group {
 public:
  Group(const Group&);
  Group(Group&&) noexcept;
  Group& operator=(const Group&);
  Group& operator=(Group&&) noexcept;
  ~Group();

  /// A group of this process alone (rank 0 of 1).
  static Group self();

  int rank() const;
  int size() const;
  /// The communicator carrying this group's collectives: "shm" (shared
  /// memory, all ranks on one host), "gloo" (TCP) or "self" (one rank).
  std::string backend() const;

  /// Reduces `tensor` in place over the group.
  void all_reduce(at::Tensor& tensor, ReduceOp op = ReduceOp::sum) const;
  Work all_reduce_async(at::Tensor& tensor, ReduceOp op = ReduceOp::sum) const;

  /// Concatenates every rank's `tensor` along `dim`, in rank order.
  at::Tensor all_gather(const at::Tensor& tensor, int64_t dim) const;
  Work all_gather_async(const at::Tensor& tensor, int64_t dim) const;

  /// Concatenates every rank's `tensor` along `dim`, in rank order, where
  /// rank r's part has `part.size(r)` indices along `dim` (the parts may
  /// differ; the other dims may not). Returns `part.full_size()` indices.
  at::Tensor all_gather(
      const at::Tensor& tensor, int64_t dim, const Partition& part) const;
  Work all_gather_async(
      const at::Tensor& tensor, int64_t dim, const Partition& part) const;

  /// Sums every rank's `tensor` and returns this rank's part of the sum along
  /// `dim`, split evenly by `Partition` (a size that does not divide raises).
  at::Tensor reduce_scatter(
      const at::Tensor& tensor, int64_t dim, ReduceOp op = ReduceOp::sum) const;
  Work reduce_scatter_async(
      const at::Tensor& tensor, int64_t dim, ReduceOp op = ReduceOp::sum) const;
  /// The same, with the parts of `dim` given by `part` (even or not):
  /// `tensor.size(dim)` is `part.full_size()`, this rank gets `part`'s local
  /// slice of the reduction.
  at::Tensor reduce_scatter(
      const at::Tensor& tensor,
      int64_t dim,
      const Partition& part,
      ReduceOp op = ReduceOp::sum) const;
  Work reduce_scatter_async(
      const at::Tensor& tensor,
      int64_t dim,
      const Partition& part,
      ReduceOp op = ReduceOp::sum) const;

  /// Collective: the split whose part r is rank r's `local_size`, e.g. of
  /// vocabulary-parallel logits that arrive without their full size. The
  /// sizes must follow `Partition`'s rule (even, or uneven by whole
  /// `unit`s); `what` names them in the error otherwise.
  Partition partition_of(
      int64_t local_size, const std::string& what, int64_t unit = 1) const;

  /// Copies `tensor` from `root` into `tensor` on every rank.
  void broadcast(at::Tensor& tensor, int root = 0) const;
  Work broadcast_async(at::Tensor& tensor, int root = 0) const;

  /// Returns once every rank of the group has called it.
  void barrier() const;
  Work barrier_async() const;

  /// Collective: splits the group into sub-groups of the ranks that pass the
  /// same `color`, ordered by `key` (ties by rank; default: the rank).
  Group split(int color, int key = -1) const;

  /// Collective: a new group of the same ranks whose collectives go through
  /// `backend` ("shm" or "gloo", e.g. to compare the two; "auto": what
  /// TORCHTP_BACKEND=auto picks for these ranks). Raises a `c10::Error` for
  /// "shm" when the ranks are not all on one host.
  Group with_backend(const std::string& backend) const;

  /// "[rank r/ws]": how every torchtp error message ends.
  std::string rank_label() const;

  /// True for copies of one group (the same communicator), false for two
  /// groups of the same ranks made separately.
  bool operator==(const Group& other) const;
  bool operator!=(const Group& other) const {
    return !(*this == other);
  }

 private:
  friend struct detail::GroupAccess;
  explicit Group(c10::intrusive_ptr<detail::Communicator> comm);
  // Checks `t` can travel; under TORCHTP_DEBUG also that every rank calls
  // the same collective `op` (argument `arg`: reduction, dim made
  // non-negative, or root; -1: none) on the same shape and dtype.
  void check_same_everywhere(
      const char* op, const at::Tensor& t, int64_t arg = -1) const;
  void check_partition(const char* op, const Partition& part) const;

  c10::intrusive_ptr<detail::Communicator> comm_;
};

/// The group used by layers whose options name none: the one set by
/// `init_from_env()`. Raises a `c10::Error` when none was set.
Group default_group();
/// Turns the cross-rank fingerprint check before each collective on or off
/// for this process (default: the TORCHTP_DEBUG environment variable).
void set_debug_checks(bool enabled);

/// Replaces the default group.
void set_default_group(const Group& group);
/// True once a default group was set.
bool has_default_group();

} // namespace torchtp
