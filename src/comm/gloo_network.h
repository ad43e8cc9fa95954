#pragma once

#include "rendezvous.h"

#include "detail/check.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace gloo::transport {
class Device;
} // namespace gloo::transport

namespace torchtp::detail {

class Connector;

/// Where this rank's Gloo device listens when GLOO_SOCKET_IFNAME names no
/// interface: the local address of the route to `master_addr`, which is
/// what the other hosts reach. Said in the join record (`join_job`).
std::string gloo_address_toward(
    const std::string& master_addr, const RankOf& me);

/// Raises on every rank (they all see the same `records`) when the job
/// spans hosts but some rank listens on a loopback address, which the other
/// hosts could never connect to.
void check_gloo_addresses_reachable(
    const std::vector<JoinRecord>& records,
    const std::string& master_addr,
    const RankOf& me);

/// Where the members of a Gloo group listen, to name the peer of a broken
/// connection: Gloo's errors give only its address ("Connection closed by
/// peer [10.0.0.2]:4321").
class PeerAddresses {
 public:
  /// The members of `world_ranks` other than this process.
  PeerAddresses(const Connector& connector, const std::vector<int>& world_ranks);
  /// " (world rank 3 on hostB)" when `message` holds the address of a
  /// member, else "".
  std::string named_in(const std::string& message) const;

 private:
  std::vector<std::pair<std::string, std::string>> peers_; // address, who
};

/// The Gloo device of this process, opened on first use and shared by every
/// Gloo group of the job.
std::shared_ptr<gloo::transport::Device> gloo_device(Connector& connector);

} // namespace torchtp::detail
