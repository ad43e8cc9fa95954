#pragma once

#include "communicator.h"

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace gloo::transport {
class Device;
} // namespace gloo::transport

namespace torchtp::detail {

/// This process's rank within a group of `world_ranks`.
int member_index(const std::vector<int>& world_ranks, int world_rank);
/// The world ranks of a sub-group given by its ranks within `world_ranks`.
std::vector<int> world_ranks_of(
    const std::vector<int>& world_ranks, const std::vector<int>& group_ranks);

/// The store's bytes as text, and back.
std::string store_get(c10d::Store& store, const std::string& key);
void store_set(
    c10d::Store& store, const std::string& key, const std::string& value);

/// Where the members of a Gloo group listen, to name the peer of a broken
/// connection: Gloo's errors give only its address ("Connection closed by
/// peer [10.0.0.2]:4321").
class PeerAddresses {
 public:
  void add(const std::string& address, const std::string& who) {
    peers_.emplace_back(address, who);
  }
  /// " (world rank 3 on hostB)" when `message` holds the address of a
  /// member, else "".
  std::string named_in(const std::string& message) const;

 private:
  std::vector<std::pair<std::string, std::string>> peers_;
};

/// Which communicator carries a group's collectives.
enum class Backend {
  automatic, ///< shm when every member is on this host, else gloo
  gloo,
  shm,
};

/// Parses TORCHTP_BACKEND's value ("", "auto", "gloo", "shm").
Backend parse_backend(const std::string& text);

/// What every communicator of one job shares: the rendezvous store, the
/// timeout, how to reach the other hosts, and on which host each world rank
/// runs. `connect` picks the communicator for a new group; splits of any
/// communicator come back here, so a sub-group of ranks on one host gets
/// shared memory even when its parent spans hosts.
class Connector : public std::enable_shared_from_this<Connector> {
 public:
  /// Collective over the world: joins the job through `store`, waiting at
  /// most `timeout` for every rank, and checks that all ranks were started
  /// for the same world. Gloo runs on `interface` when it is not empty, else
  /// on the local address that reaches `master_addr`.
  Connector(
      c10::intrusive_ptr<c10d::Store> store,
      int world_rank,
      int world_size,
      std::chrono::milliseconds timeout,
      Backend backend,
      std::string interface,
      const std::string& master_addr);

  /// Collective over `world_ranks` (ascending by group rank, this process
  /// among them): the communicator of a group named `name`, unique in the job.
  /// `backend` ("gloo", "shm") overrides the job's choice when not empty.
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
  std::chrono::milliseconds timeout() const {
    return timeout_;
  }
  /// The Gloo device of this process, opened on first use.
  std::shared_ptr<gloo::transport::Device> gloo_device();
  /// Where the members of `world_ranks` other than this process listen.
  PeerAddresses peer_addresses(const std::vector<int>& world_ranks) const;

 private:
  void join();

  c10::intrusive_ptr<c10d::Store> store_;
  int world_rank_;
  int world_size_;
  std::chrono::milliseconds timeout_;
  Backend backend_;
  std::string interface_;
  std::string master_addr_;
  std::string gloo_address_;            // when no interface is named
  std::vector<std::string> host_of_;    // per world rank
  std::vector<std::string> address_of_; // per world rank; "": an interface
  bool spans_hosts_ = false;
  std::mutex device_mutex_;
  std::shared_ptr<gloo::transport::Device> device_;
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

/// Joins the job: a TCPStore at `master_addr:master_port` (served by rank 0),
/// then the world's communicator through a `Connector`.
c10::intrusive_ptr<Communicator> connect_world(
    int rank,
    int world_size,
    const std::string& master_addr,
    int master_port,
    std::chrono::milliseconds timeout,
    Backend backend,
    const std::string& interface);

} // namespace torchtp::detail
