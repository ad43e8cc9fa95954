#include "connector.h"

#include "gloo_communicator.h"
#include "job_failure.h"
#include "shm_communicator.h"
#include "detail/check.h"

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

namespace torchtp::detail {
namespace {

constexpr const char* kInit = "torchtp::init";

std::string read_first_line(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string namespace_of(const char* kind) {
  char buf[128];
  const std::string path = std::string("/proc/self/ns/") + kind;
  const ssize_t n = readlink(path.c_str(), buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, n) : std::string("?");
}

// Two ranks can share memory when they run on one kernel (boot id) and see
// the same processes and the same network: ranks in separate network
// namespaces stand for separate hosts (as the multi-host tests build them),
// and a peer's pid must mean the same process to check that it is alive.
std::string host_key() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return std::string(host) + "|" +
         read_first_line("/proc/sys/kernel/random/boot_id") + "|" +
         namespace_of("net") + "|" + namespace_of("pid") + "|" +
         namespace_of("ipc");
}

std::string backend_name(Backend b) {
  switch (b) {
    case Backend::automatic:
      return "auto";
    case Backend::gloo:
      return "gloo";
    case Backend::shm:
      return "shm";
  }
  return "?";
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1" ||
         addr.rfind("::ffff:127.", 0) == 0;
}

// The local address of the route to `host`, the one its peers can reach
// this process on: connect() on a UDP socket picks it without sending
// anything. Unlike the hostname (127.0.1.1 in Debian's /etc/hosts, or
// nothing), it is never loopback unless `host` is.
std::string local_address_toward(const std::string& host, const RankOf& me) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  const int rc = getaddrinfo(host.c_str(), "9", &hints, &found);
  TORCHTP_CHECK(
      rc == 0, kInit, me, "cannot resolve MASTER_ADDR '", host,
      "': ", gai_strerror(rc));
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
      !address.empty(), kInit, me, "no local address reaches MASTER_ADDR '",
      host, "'; set GLOO_SOCKET_IFNAME to the interface to use");
  return address;
}

// What a rank says about itself when it joins: the world it was started
// for, the address its Gloo device listens on ("" when an interface is
// named) and its host.
struct JoinRecord {
  int world_size = 0;
  std::string address;
  std::string host_key;

  std::string host() const {
    return host_key.substr(0, host_key.find('|'));
  }
};

constexpr const char* kJoined = "torchtp/joined";
constexpr const char* kJoinError = "torchtp/join_error";
constexpr const char* kJoinErrorSeen = "torchtp/join_error_seen";
// How long rank 0, which serves the store, stays after a failed join so
// that the others can read why.
constexpr std::chrono::seconds kLinger(2);

std::string join_key(int rank) {
  return "torchtp/join/" + std::to_string(rank);
}

void write_record(c10d::Store& store, int rank, const JoinRecord& r) {
  store_set(
      store, join_key(rank),
      std::to_string(r.world_size) + "\n" + r.address + "\n" + r.host_key);
}

// Rank `rank`'s record, or nullopt when what is there is no torchtp record
// (another program's store on MASTER_PORT).
c10::optional<JoinRecord> read_record(c10d::Store& store, int rank) {
  std::istringstream in(store_get(store, join_key(rank)));
  JoinRecord r;
  std::string size;
  if (!std::getline(in, size) || !std::getline(in, r.address) ||
      !std::getline(in, r.host_key)) {
    return c10::nullopt;
  }
  try {
    r.world_size = std::stoi(size);
  } catch (const std::exception&) {
    return c10::nullopt;
  }
  return r;
}

// "rank 3", "ranks 2, 3", "ranks 0-7, 9".
std::string ranks_text(const std::vector<int>& ranks) {
  std::ostringstream out;
  out << (ranks.size() == 1 ? "rank " : "ranks ");
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) {
      ++j;
    }
    out << (i == 0 ? "" : ", ");
    if (j >= i + 2) {
      out << ranks[i] << "-" << ranks[j];
    } else {
      out << ranks[i];
      j = i;
    }
    i = j + 1;
  }
  return out.str();
}

// "ranks 0, 1 on hostA; ranks 2, 3 on hostB".
std::string ranks_by_host(const std::map<std::string, std::vector<int>>& m) {
  std::string out;
  for (const auto& [host, ranks] : m) {
    out += (out.empty() ? "" : "; ") + ranks_text(ranks) + " on " + host;
  }
  return out;
}

std::string world_mismatch(
    int a, const JoinRecord& ra, int b, const JoinRecord& rb) {
  return "rank " + std::to_string(a) + " (on " + ra.host() +
         ") was started for a world of " + std::to_string(ra.world_size) +
         " ranks, rank " + std::to_string(b) + " (on " + rb.host() +
         ") for a world of " + std::to_string(rb.world_size) +
         "; every host's launcher needs the same --nnodes and "
         "--nproc-per-node (WORLD_SIZE)";
}

// The join: every rank writes its record and counts itself in, then waits
// until the whole world has, checking as soon as it can that all were
// started for one world. Returns why the ranks are not one job, or "" with
// `records` filled. A rank that finds a problem leaves it in the store, so
// that every rank raises it at once rather than at the timeout.
std::string gather_records(
    c10d::Store& store,
    int rank,
    const JoinRecord& mine,
    std::chrono::milliseconds timeout,
    std::vector<JoinRecord>& records) {
  using Clock = std::chrono::steady_clock;
  const int world_size = mine.world_size;
  const auto deadline = Clock::now() + timeout;
  // Every rank that fails says it has read why; rank 0 serves the store,
  // so it stays (a moment, no longer) until the others have.
  auto fail = [&](const std::string& problem, bool publish) {
    if (publish) {
      store_set(store, kJoinError, problem);
    }
    if (rank != 0) {
      store.add(kJoinErrorSeen, 1);
      return problem;
    }
    const auto linger = Clock::now() + kLinger;
    while (Clock::now() < linger &&
           store.add(kJoinErrorSeen, 0) < store.add(kJoined, 0) - 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return problem;
  };
  auto not_ours = [&](int r) {
    return fail(
        "what the store holds for rank " + std::to_string(r) +
            " is not a torchtp rank's: does another program use MASTER_PORT?",
        true);
  };
  if (rank != 0) {
    // Rank 0 writes its record as soon as it serves the store. Waiting for
    // it first also bounds every later request: until a wait, the store's
    // socket has no receive timeout, and a stray server on MASTER_PORT
    // that never answers would hold this rank forever.
    store.wait({join_key(0)}, timeout);
    auto leader = read_record(store, 0);
    if (!leader) {
      return not_ours(0);
    }
    if (leader->world_size != world_size) {
      return fail(world_mismatch(rank, mine, 0, *leader), true);
    }
  }
  if (store.add(join_key(rank) + "/claims", 1) > 1) {
    return fail(
        "two processes joined as rank " + std::to_string(rank) +
            ": do two hosts' launchers have the same --node-rank, or does "
            "another job use this MASTER_ADDR and MASTER_PORT?",
        true);
  }
  write_record(store, rank, mine);
  store.add(kJoined, 1);
  for (;;) {
    if (store.check({kJoinError})) {
      return fail(store_get(store, kJoinError), false);
    }
    if (store.add(kJoined, 0) >= world_size) {
      break;
    }
    if (Clock::now() >= deadline) {
      std::vector<int> missing;
      std::map<std::string, std::vector<int>> joined;
      for (int r = 0; r < world_size; ++r) {
        if (!store.check({join_key(r)})) {
          missing.push_back(r);
        } else if (auto record = read_record(store, r)) {
          joined[record->host()].push_back(r);
        }
      }
      return fail(
          ranks_text(missing) + " of " + std::to_string(world_size) +
              " did not join within " + std::to_string(timeout.count() / 1000) +
              " s (TORCHTP_TIMEOUT_S; joined: " + ranks_by_host(joined) +
              "); is every host's launcher running, with the same "
              "--master-addr and --master-port?",
          true);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  records.resize(world_size);
  for (int r = 0; r < world_size; ++r) {
    auto record = read_record(store, r);
    if (!record) {
      return not_ours(r);
    }
    if (record->world_size != world_size) {
      return fail(world_mismatch(r, *record, rank, mine), true);
    }
    records[r] = *record;
  }
  return "";
}

} // namespace

std::string store_get(c10d::Store& store, const std::string& key) {
  auto v = store.get(key);
  return std::string(v.begin(), v.end());
}

void store_set(
    c10d::Store& store, const std::string& key, const std::string& v) {
  store.set(key, std::vector<uint8_t>(v.begin(), v.end()));
}

int member_index(const std::vector<int>& world_ranks, int world_rank) {
  auto it = std::find(world_ranks.begin(), world_ranks.end(), world_rank);
  TORCH_INTERNAL_ASSERT(it != world_ranks.end(), "connect by a non-member");
  return static_cast<int>(it - world_ranks.begin());
}

std::vector<int> world_ranks_of(
    const std::vector<int>& world_ranks, const std::vector<int>& group_ranks) {
  std::vector<int> out;
  out.reserve(group_ranks.size());
  for (int r : group_ranks) {
    out.push_back(world_ranks.at(r));
  }
  return out;
}

Backend parse_backend(const std::string& text) {
  if (text.empty() || text == "auto") {
    return Backend::automatic;
  }
  if (text == "gloo") {
    return Backend::gloo;
  }
  if (text == "shm") {
    return Backend::shm;
  }
  TORCH_CHECK(
      false, "torchtp: TORCHTP_BACKEND='", text,
      "' is not one of auto, gloo, shm");
}

Connector::Connector(
    c10::intrusive_ptr<c10d::Store> store,
    int world_rank,
    int world_size,
    std::chrono::milliseconds timeout,
    Backend backend,
    std::string interface,
    const std::string& master_addr)
    : store_(std::move(store)),
      world_rank_(world_rank),
      world_size_(world_size),
      timeout_(timeout),
      backend_(backend),
      interface_(std::move(interface)),
      master_addr_(master_addr) {
  if (interface_.empty()) {
    gloo_address_ =
        local_address_toward(master_addr_, RankOf(world_rank_, world_size_));
  }
  join();
}

void Connector::join() {
  const RankOf me(world_rank_, world_size_);
  const JoinRecord mine{world_size_, gloo_address_, host_key()};
  std::vector<JoinRecord> records;
  std::string problem;
  try {
    problem = gather_records(*store_, world_rank_, mine, timeout_, records);
  } catch (const std::exception& e) {
    const auto* error = dynamic_cast<const c10::Error*>(&e);
    TORCHTP_CHECK(
        false, kInit, me, "joining the job through the store at MASTER_ADDR ",
        master_addr_,
        " failed: ", error ? error->what_without_backtrace() : e.what(),
        " (rank 0 exited, or another program serves MASTER_PORT?)");
  }
  TORCHTP_CHECK(problem.empty(), kInit, me, problem);

  // Every rank learns where every rank runs: a group's communicator is then
  // chosen alike on all its members.
  std::map<std::string, std::vector<int>> on_loopback;
  for (int r = 0; r < world_size_; ++r) {
    host_of_.push_back(records[r].host_key);
    address_of_.push_back(records[r].address);
    if (!records[r].address.empty() && is_loopback(records[r].address)) {
      on_loopback[records[r].host() + " at " + records[r].address].push_back(r);
    }
  }
  spans_hosts_ = std::any_of(host_of_.begin(), host_of_.end(), [&](auto& h) {
    return h != host_of_[0];
  });
  // Peers on other hosts could never connect to a loopback address; every
  // rank sees the same records, so every rank says so now.
  TORCHTP_CHECK(
      !spans_hosts_ || on_loopback.empty(), kInit, me,
      "the job spans hosts but ", ranks_by_host(on_loopback),
      " reach MASTER_ADDR (", master_addr_,
      ") through loopback, an address the other hosts cannot reach: set "
      "MASTER_ADDR to an address of rank 0's host that every host reaches, "
      "or GLOO_SOCKET_IFNAME to the network interface");
}

namespace {

// Every communicator of the job is broken when this process reports a
// failure (torchtp::report_failure).
c10::intrusive_ptr<Communicator> registered(
    c10::intrusive_ptr<Communicator> comm) {
  JobFailure::get().add(comm);
  return comm;
}

} // namespace

c10::intrusive_ptr<Communicator> Connector::connect(
    const std::vector<int>& world_ranks,
    const std::string& name,
    const std::string& backend) {
  const bool one_host = std::all_of(
      world_ranks.begin(), world_ranks.end(),
      [&](int r) { return host_of_[r] == host_of_[world_ranks[0]]; });
  const Backend asked = backend.empty() ? backend_ : parse_backend(backend);
  Backend chosen = asked;
  if (chosen == Backend::automatic) {
    chosen = one_host ? Backend::shm : Backend::gloo;
  }
  if (chosen == Backend::shm) {
    if (!one_host) {
      std::ostringstream hosts;
      for (int r : world_ranks) {
        hosts << (r == world_ranks[0] ? "" : ", ") << "rank " << r << " on "
              << host_of_[r].substr(0, host_of_[r].find('|'));
      }
      TORCH_CHECK(
          false, "torchtp: backend ", backend_name(asked), " but group ", name,
          " spans hosts (", hosts.str(),
          "); shared memory works within one host: use auto or gloo ",
          rank_label(world_rank_, world_size_));
    }
    return registered(
        make_shm_communicator(shared_from_this(), world_ranks, name));
  }
  return registered(
      make_gloo_communicator(shared_from_this(), world_ranks, name));
}

PeerAddresses Connector::peer_addresses(
    const std::vector<int>& world_ranks) const {
  std::map<std::string, std::vector<int>> at;
  for (int r : world_ranks) {
    if (r != world_rank_ && !address_of_[r].empty()) {
      at[address_of_[r]].push_back(r);
    }
  }
  PeerAddresses peers;
  for (const auto& [address, ranks] : at) {
    const std::string& host = host_of_[ranks[0]];
    peers.add(
        address,
        "world " + ranks_text(ranks) + " on " + host.substr(0, host.find('|')));
  }
  return peers;
}

std::string PeerAddresses::named_in(const std::string& message) const {
  for (const auto& [address, who] : peers_) {
    if (message.find("[" + address + "]") != std::string::npos) {
      return " (" + who + ")";
    }
  }
  return "";
}

std::shared_ptr<gloo::transport::Device> Connector::gloo_device() {
  std::lock_guard<std::mutex> lock(device_mutex_);
  if (device_) {
    return device_;
  }
  const std::string where =
      interface_.empty()
          ? gloo_address_ + ", the local address toward MASTER_ADDR " +
                master_addr_ + " (GLOO_SOCKET_IFNAME names another interface)"
          : "interface " + interface_ + " (GLOO_SOCKET_IFNAME)";
  try {
    device_ =
        interface_.empty()
            ? c10d::ProcessGroupGloo::createDeviceForHostname(gloo_address_)
            : c10d::ProcessGroupGloo::createDeviceForInterface(interface_);
  } catch (const std::exception& e) {
    TORCHTP_CHECK(
        false, "torchtp", RankOf(world_rank_, world_size_),
        "cannot open a Gloo device on ", where, ": ", e.what());
  }
  // Across hosts, which address a rank listens on is the first thing to
  // know when ranks cannot connect.
  if (spans_hosts_) {
    std::cerr << "torchtp: Gloo listens on " + where + " " +
                     rank_label(world_rank_, world_size_) + "\n"
              << std::flush;
  }
  return device_;
}

c10::intrusive_ptr<Communicator> connect_world(
    int rank,
    int world_size,
    const std::string& master_addr,
    int master_port,
    std::chrono::milliseconds timeout,
    Backend backend,
    const std::string& interface) {
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(master_port);
  store_options.isServer = rank == 0;
  store_options.numWorkers = world_size;
  // The Connector's join waits for the workers instead: within the same
  // timeout, and naming the ranks that never came.
  store_options.waitWorkers = false;
  store_options.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(master_addr, store_options);
  } catch (const std::exception& e) {
    const auto* error = dynamic_cast<const c10::Error*>(&e);
    TORCHTP_CHECK(
        false, kInit, RankOf(rank, world_size), "rendezvous at ", master_addr,
        ":", master_port, " failed (world size ", world_size, ", timeout ",
        timeout.count() / 1000,
        " s): ", error ? error->what_without_backtrace() : e.what());
  }
  // From here a failure of this rank reaches the others through the store.
  JobFailure::get().attach(store, rank, world_size);
  auto connector = std::make_shared<Connector>(
      store, rank, world_size, timeout, backend, interface, master_addr);
  std::vector<int> everyone(world_size);
  for (int r = 0; r < world_size; ++r) {
    everyone[r] = r;
  }
  return connector->connect(everyone, "world");
}

} // namespace torchtp::detail
