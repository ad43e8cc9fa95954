#include "gloo_network.h"

#include "connector.h"

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <iostream>
#include <map>

namespace torchtp::detail {
namespace {

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1" ||
         addr.rfind("::ffff:127.", 0) == 0;
}

} // namespace

// connect() on a UDP socket picks the route's local address without sending
// anything. Unlike the hostname (127.0.1.1 in Debian's /etc/hosts, or
// nothing), it is never loopback unless `master_addr` is.
std::string gloo_address_toward(
    const std::string& master_addr, const RankOf& me) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(master_addr.c_str(), "9", &hints, &found);
  TORCHTP_CHECK(
      rc == 0, "torchtp::init", me, "cannot resolve MASTER_ADDR '",
      master_addr, "': ", gai_strerror(rc));
  std::string address;
  for (addrinfo* ai = found; ai != nullptr && address.empty();
       ai = ai->ai_next) {
    const int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      continue;
    }
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    char text[NI_MAXHOST] = {0};
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        getnameinfo(
            reinterpret_cast<sockaddr*>(&local), len, text, sizeof(text),
            nullptr, 0, NI_NUMERICHOST) == 0) {
      address = text;
    }
    close(fd);
  }
  freeaddrinfo(found);
  TORCHTP_CHECK(
      !address.empty(), "torchtp::init", me,
      "no local address reaches MASTER_ADDR '", master_addr,
      "'; set GLOO_SOCKET_IFNAME to the interface to use");
  return address;
}

void check_gloo_addresses_reachable(
    const std::vector<JoinRecord>& records,
    const std::string& master_addr,
    const RankOf& me) {
  std::map<std::string, std::vector<int>> on_loopback;
  for (size_t r = 0; r < records.size(); ++r) {
    if (!records[r].address.empty() && is_loopback(records[r].address)) {
      on_loopback[records[r].host() + " at " + records[r].address].push_back(
          static_cast<int>(r));
    }
  }
  TORCHTP_CHECK(
      !spans_hosts(records) || on_loopback.empty(), "torchtp::init", me,
      "the job spans hosts but ", ranks_by_host(on_loopback),
      " reach MASTER_ADDR (", master_addr,
      ") through loopback, an address the other hosts cannot reach: set "
      "MASTER_ADDR to an address of rank 0's host that every host reaches, "
      "or GLOO_SOCKET_IFNAME to the network interface");
}

PeerAddresses::PeerAddresses(
    const Connector& connector, const std::vector<int>& world_ranks) {
  const auto& records = connector.records();
  std::map<std::string, std::vector<int>> at;
  for (int r : world_ranks) {
    if (r != connector.world_rank() && !records[r].address.empty()) {
      at[records[r].address].push_back(r);
    }
  }
  for (const auto& [address, ranks] : at) {
    peers_.emplace_back(
        address,
        "world " + ranks_text(ranks) + " on " + records[ranks[0]].host());
  }
}

std::string PeerAddresses::named_in(const std::string& message) const {
  for (const auto& [address, who] : peers_) {
    if (message.find("[" + address + "]") != std::string::npos) {
      return " (" + who + ")";
    }
  }
  return "";
}

std::shared_ptr<gloo::transport::Device> gloo_device(Connector& connector) {
  return connector.shared_resource<gloo::transport::Device>("gloo/device", [&] {
    const RankOf me(connector.world_rank(), connector.world_size());
    const std::string& interface = connector.interface();
    const std::string& address = connector.records()[me.rank].address;
    const std::string where = interface.empty()
        ? address + ", the local address toward MASTER_ADDR " +
            connector.master_addr() +
            " (GLOO_SOCKET_IFNAME names another interface)"
        : "interface " + interface + " (GLOO_SOCKET_IFNAME)";
    std::shared_ptr<gloo::transport::Device> device;
    try {
      device = interface.empty()
          ? c10d::ProcessGroupGloo::createDeviceForHostname(address)
          : c10d::ProcessGroupGloo::createDeviceForInterface(interface);
    } catch (const std::exception& e) {
      TORCHTP_CHECK(
          false, "torchtp", me, "cannot open a Gloo device on ", where, ": ",
          e.what());
    }
    // Across hosts, which address a rank listens on is the first thing to
    // know when ranks cannot connect.
    if (connector.spans_hosts()) {
      std::cerr << "torchtp: Gloo listens on " + where + " " +
                       rank_label(me) + "\n"
                << std::flush;
    }
    return device;
  });
}

} // namespace torchtp::detail
