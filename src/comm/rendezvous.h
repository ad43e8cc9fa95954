#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace torchtp::detail {

/// How long world rank 0, which serves the store, stays after a failure (of
/// the join or of the job) so that the other ranks can read why before the
/// store goes with it; it leaves as soon as all have. They look every 10 to
/// 100 ms while they wait, so 2 s is ample even on a loaded machine, yet
/// short enough not to hold up a failed job's exit.
constexpr std::chrono::seconds kStoreServerLinger(2);

/// The store's bytes as text, and back.
std::string store_get(c10d::Store& store, const std::string& key);
void store_set(
    c10d::Store& store, const std::string& key, const std::string& value);

/// "rank 3", "ranks 2, 3", "ranks 0-7, 9".
std::string ranks_text(const std::vector<int>& ranks);
/// "ranks 0, 1 on hostA; ranks 2, 3 on hostB".
std::string ranks_by_host(const std::map<std::string, std::vector<int>>& m);

/// What a rank says about itself when it joins: the world it was started
/// for, the address its peers reach it on ("" when GLOO_SOCKET_IFNAME names
/// an interface instead) and its host.
struct JoinRecord {
  int world_size = 0;
  std::string address;
  /// Equal for two ranks exactly when they can share memory.
  std::string host_key;

  /// The host's name, for messages.
  std::string host() const {
    return host_key.substr(0, host_key.find('|'));
  }
};

/// True when `records` (every world rank's) name more than one host.
bool spans_hosts(const std::vector<JoinRecord>& records);

/// As whom this process joins the job, where the ranks meet (rank 0 serves
/// the store at `master_addr:master_port`) and how long they wait.
struct Rendezvous {
  int rank = 0;
  int world_size = 1;
  std::string master_addr;
  int master_port = 0;
  std::chrono::milliseconds timeout{0};
};

/// The job's rendezvous store, a TCPStore. Raises a `c10::Error` naming the
/// address when it cannot be reached within the timeout.
c10::intrusive_ptr<c10d::Store> open_store(const Rendezvous& at);

/// Collective over the world: joins the job through `store`, saying that
/// this rank listens on `address`, waits at most the timeout for every rank
/// and checks that all were started for the same world. Returns every world
/// rank's record, the same on every rank; raises a `c10::Error` on every
/// rank at once when the ranks are not one job.
std::vector<JoinRecord> join_job(
    c10d::Store& store, const Rendezvous& at, const std::string& address);

} // namespace torchtp::detail
