#pragma once

#include "communicator.h"

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <c10/util/Optional.h>

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

namespace torchtp::detail {

/// How a collective that fails because of another rank's failure starts its
/// cause: "first failure in the job: rank 1 raised: ...".
constexpr const char* kFirstFailure = "first failure in the job: ";

/// The first failure of the job, kept where every rank reads it: the
/// rendezvous store ("torchtp/failure", set once: the first writer wins).
/// One per process. `report` is what `torchtp::report_failure` does;
/// communicators call `record` when a collective fails for good, and read
/// `known` while they wait, so that a rank waiting for a peer that raised
/// fails at once with the peer's message instead of at the timeout.
class JobFailure {
 public:
  static JobFailure& get();

  /// The job this process joined (called once, by `connect_world`).
  void attach(
      const c10::intrusive_ptr<c10d::Store>& store,
      int world_rank,
      int world_size);
  /// A communicator that `report` breaks.
  void add(const c10::intrusive_ptr<Communicator>& comm);

  /// This process's world rank (RANK, else 0, before a job was joined).
  int world_rank() const;

  /// Records `message` as the job's first failure unless one is recorded,
  /// and returns the first failure. Never raises: without a store (a single
  /// process, or rank 0 gone) the first failure is the one this process
  /// knows.
  std::string record(const std::string& message);
  /// `record`, then breaks every communicator of this process: their pending
  /// and later collectives raise, here and (through the segment or the
  /// store) on every peer. World rank 0 serves the store, so it stays
  /// until every rank has read the failure, at most `kStoreServerLinger`.
  std::string report(const std::string& message);
  /// The job's first failure, "" when none is known. `ask_store`: also look
  /// in the store (a round trip) when this process knows of none.
  std::string known(bool ask_store);

 private:
  JobFailure() = default;
  c10::intrusive_ptr<c10d::Store> store() const;
  void acknowledge(c10d::Store& store);

  mutable std::mutex mutex_;
  // Weak: the store lives as long as the job's communicators, no longer.
  c10::optional<c10::weak_intrusive_ptr<c10d::Store>> store_;
  int world_rank_ = -1;
  int world_size_ = 1;
  std::vector<c10::weak_intrusive_ptr<Communicator>> comms_;
  std::string first_;       // once known
  bool acknowledged_ = false;
  std::atomic<bool> any_{false}; // first_ is set: a lock-free fast path
};

} // namespace torchtp::detail
