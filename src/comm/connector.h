#pragma once

#include "communicator.h"
#include "rendezvous.h"

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace torchtp::detail {

/// This process's rank within a group of `world_ranks`.
int member_index(const std::vector<int>& world_ranks, int world_rank);
/// The world ranks of a sub-group given by its ranks within `world_ranks`.
std::vector<int> world_ranks_of(
    const std::vector<int>& world_ranks, const std::vector<int>& group_ranks);

/// What every communicator of one job shares: the rendezvous store, the
/// timeout, how to reach the other hosts, on which host each world rank
/// runs, and each backend's per-job resources. `connect` makes the
/// communicator of a new group (the choice is the registry's, backends.h);
/// splits of any communicator come back here, so a sub-group of ranks on
/// one host gets shared memory even when its parent spans hosts.
class Connector : public std::enable_shared_from_this<Connector> {
 public:
  /// The job joined at `at` through `store`; `records`: every world rank's,
  /// from `join_job`. `backend`: the job's choice (TORCHTP_BACKEND, a name
  /// `unknown_backend` accepts). Gloo runs on `interface` when it is not
  /// empty, else on the address toward the master.
  Connector(
      c10::intrusive_ptr<c10d::Store> store,
      const Rendezvous& at,
      std::string backend,
      std::string interface,
      std::vector<JoinRecord> records);

  /// Collective over `world_ranks` (ascending by group rank, this process
  /// among them): the communicator of a group named `name`, unique in the job.
  /// `backend` (a registry name or "auto") overrides the job's choice when
  /// not empty.
  c10::intrusive_ptr<Communicator> connect(
      const std::vector<int>& world_ranks,
      const std::string& name,
      const std::string& backend = "");

  const c10::intrusive_ptr<c10d::Store>& store() const {
    return store_;
  }
  int world_rank() const {
    return world_rank_;
  }
  int world_size() const {
    return world_size_;
  }
  std::chrono::milliseconds timeout() const {
    return timeout_;
  }
  /// GLOO_SOCKET_IFNAME, or "".
  const std::string& interface() const {
    return interface_;
  }
  const std::string& master_addr() const {
    return master_addr_;
  }
  /// Every world rank's join record: its host and address.
  const std::vector<JoinRecord>& records() const {
    return records_;
  }
  /// True when the job's ranks are on more than one host.
  bool spans_hosts() const {
    return spans_hosts_;
  }

  /// A resource that one backend's groups share for the life of the job
  /// (Gloo's device), made by `make` on first use; `key` names it.
  template <typename T, typename Make>
  std::shared_ptr<T> shared_resource(const std::string& key, Make&& make) {
    std::lock_guard<std::mutex> lock(resources_mutex_);
    auto& slot = resources_[key];
    if (!slot) {
      slot = make();
    }
    return std::static_pointer_cast<T>(slot);
  }

 private:
  const c10::intrusive_ptr<c10d::Store> store_;
  const int world_rank_;
  const int world_size_;
  const std::chrono::milliseconds timeout_;
  const std::string backend_;
  const std::string interface_;
  const std::string master_addr_;
  const std::vector<JoinRecord> records_;
  const bool spans_hosts_;
  std::mutex resources_mutex_;
  std::map<std::string, std::shared_ptr<void>> resources_;
};

/// What the communicators a Connector makes have in common: their members
/// (as world ranks), this process's rank among them, the timeout, and
/// splits that go back to the Connector.
class ConnectedCommunicator : public Communicator {
 public:
  ConnectedCommunicator(
      std::shared_ptr<Connector> connector,
      std::vector<int> world_ranks,
      std::string name)
      : Communicator(std::move(name)),
        connector_(std::move(connector)),
        world_ranks_(std::move(world_ranks)),
        rank_(member_index(world_ranks_, connector_->world_rank())),
        size_(static_cast<int>(world_ranks_.size())),
        timeout_(connector_->timeout()) {}

  int rank() const final {
    return rank_;
  }
  int size() const final {
    return size_;
  }
  std::chrono::milliseconds timeout() const final {
    return timeout_;
  }
  c10::intrusive_ptr<Communicator> split(
      const std::vector<int>& ranks,
      const std::string& name,
      const std::string& backend) final {
    return connector_->connect(
        world_ranks_of(world_ranks_, ranks), name, backend);
  }

 protected:
  const std::shared_ptr<Connector> connector_;
  const std::vector<int> world_ranks_;
  const int rank_;
  const int size_;
  const std::chrono::milliseconds timeout_;
};

} // namespace torchtp::detail
