#include "connector.h"

#include "gloo_communicator.h"
#include "shm_communicator.h"
#include "torchtp/detail/check.h"

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace torchtp::detail {
namespace {

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

} // namespace

std::string store_get(c10d::Store& store, const std::string& key) {
  auto v = store.get(key);
  return std::string(v.begin(), v.end());
}

void store_set(c10d::Store& store, const std::string& key, const std::string& v) {
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
    bool loopback)
    : store_(std::move(store)),
      world_rank_(world_rank),
      world_size_(world_size),
      timeout_(timeout),
      backend_(backend),
      interface_(std::move(interface)),
      loopback_(loopback) {
  const std::string tag = rank_label(world_rank_, world_size_);
  try {
    // Every rank says where it runs, and every rank learns it for all: a
    // group's backend is then decided alike on all its members.
    store_set(*store_, "torchtp/host/" + std::to_string(world_rank_), host_key());
    host_of_.resize(world_size_);
    for (int r = 0; r < world_size_; ++r) {
      host_of_[r] = store_get(*store_, "torchtp/host/" + std::to_string(r));
    }
  } catch (const std::exception& e) {
    TORCH_CHECK(
        false, "torchtp::init: exchanging host names through the store failed ",
        tag, ": ", e.what());
  }
}

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
          false, "torchtp: backend ", backend_name(asked),
          " but group ", name, " spans hosts (", hosts.str(),
          "); shared memory works within one host: use auto or gloo ",
          rank_label(world_rank_, world_size_));
    }
    return make_shm_communicator(shared_from_this(), world_ranks, name);
  }
  return make_gloo_communicator(shared_from_this(), world_ranks, name);
}

std::shared_ptr<gloo::transport::Device> Connector::gloo_device() {
  std::lock_guard<std::mutex> lock(device_mutex_);
  if (device_) {
    return device_;
  }
  try {
    if (!interface_.empty()) {
      device_ = c10d::ProcessGroupGloo::createDeviceForInterface(interface_);
    } else if (loopback_) {
      device_ = c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
    } else {
      device_ = c10d::ProcessGroupGloo::createDefaultDevice();
    }
  } catch (const std::exception& e) {
    TORCH_CHECK(
        false, "torchtp: cannot open a Gloo device (interface '", interface_,
        "') ", rank_label(world_rank_, world_size_), ": ", e.what());
  }
  return device_;
}

namespace {

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

} // namespace

c10::intrusive_ptr<Communicator> connect_world(
    int rank,
    int world_size,
    const std::string& master_addr,
    int master_port,
    std::chrono::milliseconds timeout,
    Backend backend,
    const std::string& interface) {
  const std::string tag = rank_label(rank, world_size);
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(master_port);
  store_options.isServer = rank == 0;
  store_options.numWorkers = world_size;
  store_options.waitWorkers = true;
  store_options.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(master_addr, store_options);
  } catch (const std::exception& e) {
    TORCH_CHECK(
        false, "torchtp::init: rendezvous at ", master_addr, ":", master_port,
        " failed ", tag, " (world size ", world_size, ", timeout ",
        timeout.count() / 1000, " s): ", e.what());
  }
  auto connector = std::make_shared<Connector>(
      store, rank, world_size, timeout, backend, interface,
      is_loopback(master_addr));
  std::vector<int> everyone(world_size);
  for (int r = 0; r < world_size; ++r) {
    everyone[r] = r;
  }
  return connector->connect(everyone, "world");
}

} // namespace torchtp::detail
