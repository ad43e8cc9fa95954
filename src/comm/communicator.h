#pragma once

#include "torchtp/reduce_op.h"
#include "torchtp/work.h"

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace torchtp {

class Group;

namespace detail {

/// The backend interface under `torchtp::Group`: a set of processes and the
/// raw collectives between them. Only implementations of this class touch
/// c10d; everything above speaks `Group`.
///
/// Every tensor given here is contiguous, on the CPU, and has the same shape
/// and dtype on every rank (the Group checks and reshapes). Implementations
/// carry every floating dtype, bfloat16 included, and honour `timeout()`.
///
/// It derives from `CustomClassHolder` so that an autograd function can keep
/// it in `ctx->saved_data` as a capsule and run the adjoint collective in
/// backward.
class Communicator : public torch::CustomClassHolder {
 public:
  explicit Communicator(std::string name) : name_(std::move(name)) {}
  ~Communicator() override = default;

  /// Unique name of this communicator within the job ("world", "world/s0c1").
  const std::string& name() const {
    return name_;
  }
  /// Number of `Group::split` calls made on this communicator so far; all
  /// members make them in the same order, so the count names sub-groups.
  int64_t next_split_index() {
    return splits_++;
  }

  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// Short name for messages: "gloo", "self", ...
  virtual std::string backend() const = 0;
  /// How long one collective may take before it fails.
  virtual std::chrono::milliseconds timeout() const = 0;

  /// Reduces `tensor` in place over all ranks.
  virtual Work all_reduce(at::Tensor& tensor, ReduceOp op) = 0;
  /// Concatenates every rank's `input` along dim 0, in rank order; `output`
  /// has `size()` times the rows of `input`.
  virtual Work all_gather(const at::Tensor& input, at::Tensor& output) = 0;
  /// `input` holds `size()` equal blocks along dim 0; rank r receives the sum
  /// (or max/min) of every rank's block r in `output`.
  virtual Work reduce_scatter(
      const at::Tensor& input, at::Tensor& output, ReduceOp op) = 0;
  /// Copies `tensor` from `root` to every rank.
  virtual Work broadcast(at::Tensor& tensor, int root) = 0;
  /// Returns once every rank has called it.
  virtual Work barrier() = 0;
  /// Breaks the communicator because the job failed (`reason`, the job's
  /// first failure): its pending and later collectives raise, on this rank
  /// and on its peers, instead of waiting. Callable from any thread, during
  /// a collective too; never raises. The default does nothing (one rank
  /// waits for nobody).
  virtual void abort(const std::string& reason) {
    (void)reason;
  }
  /// A communicator over `ranks` (ranks of this communicator, ascending by
  /// their new rank). Called by exactly the members, all with the same `name`,
  /// which must be unique for the life of the job. `backend` ("gloo", "shm",
  /// "auto": a name of the registry, backends.h) forces a communicator;
  /// empty: the job's choice (TORCHTP_BACKEND).
  virtual c10::intrusive_ptr<Communicator> split(
      const std::vector<int>& ranks,
      const std::string& name,
      const std::string& backend) = 0;

 private:
  std::string name_;
  int64_t splits_ = 0;
};

/// How the library (and only it) builds a Group from a communicator and
/// reaches a Group's communicator: users make groups with `init_from_env`,
/// `Group::self()` and `Group::split`.
struct GroupAccess {
  static Group make(c10::intrusive_ptr<Communicator> comm);
  static const c10::intrusive_ptr<Communicator>& communicator(
      const Group& group);
};

/// The communicator of a one-process group: every collective is the identity
/// and returns at once.
c10::intrusive_ptr<Communicator> make_self_communicator();

} // namespace detail
} // namespace torchtp
