#include "torchtp/init.h"

#include "comm/gloo_communicator.h"
#include "torchtp/error.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace torchtp {
namespace {

c10::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    return c10::nullopt;
  }
  return std::string(v);
}

int env_int(const char* name, int fallback) {
  auto v = env(name);
  if (!v) {
    return fallback;
  }
  try {
    size_t used = 0;
    int value = std::stoi(*v, &used);
    TORCH_CHECK(used == v->size(), "trailing characters");
    return value;
  } catch (const std::exception&) {
    TORCH_CHECK(
        false, "torchtp::init_from_env: ", name, "='", *v,
        "' is not an integer");
  }
}

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    return std::max(1, CPU_COUNT(&set));
  }
  return std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

} // namespace

InitOptions options_from_env() {
  InitOptions o;
  // The first launcher convention present wins: torchrun, mpirun, Slurm.
  const std::pair<const char*, const char*> conventions[] = {
      {"RANK", "WORLD_SIZE"},
      {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
      {"PMI_RANK", "PMI_SIZE"},
      {"SLURM_PROCID", "SLURM_NTASKS"},
  };
  for (const auto& [rank_var, size_var] : conventions) {
    if (env(rank_var) && env(size_var)) {
      o.rank(env_int(rank_var, 0)).world_size(env_int(size_var, 1));
      break;
    }
  }
  o.local_rank(env_int(
      "LOCAL_RANK",
      env_int("OMPI_COMM_WORLD_LOCAL_RANK", env_int("SLURM_LOCALID", 0))));
  o.local_world_size(env_int(
      "LOCAL_WORLD_SIZE",
      env_int("OMPI_COMM_WORLD_LOCAL_SIZE", o.world_size())));
  o.master_addr(env("MASTER_ADDR").value_or("127.0.0.1"));
  o.master_port(env_int("MASTER_PORT", 29500));
  o.timeout(std::chrono::seconds(env_int("TORCHTP_TIMEOUT_S", 300)));
  o.socket_ifname(env("GLOO_SOCKET_IFNAME").value_or(""));
  o.num_threads(env_int("OMP_NUM_THREADS", 0));
  return o;
}

Group init(const InitOptions& o) {
  const std::string tag = detail::rank_tag(o.rank(), o.world_size());
  TORCH_CHECK(
      o.world_size() >= 1, "torchtp::init: world size ", o.world_size(),
      " must be at least 1 ", tag);
  TORCH_CHECK(
      o.rank() >= 0 && o.rank() < o.world_size(), "torchtp::init: rank ",
      o.rank(), " is outside the world of ", o.world_size(), " ", tag);
  TORCH_CHECK(
      o.master_port() > 0 && o.master_port() < 65536,
      "torchtp::init: master port ", o.master_port(), " is not a TCP port ",
      tag);
  TORCH_CHECK(
      o.timeout().count() > 0,
      "torchtp::init: the timeout must be "
      "positive ",
      tag);

  // libtorch starts with one intra-op thread; ranks on one host share its
  // cores.
  int threads = o.num_threads();
  if (threads <= 0) {
    threads =
        std::max(1, available_cores() / std::max(1, o.local_world_size()));
  }
  at::set_num_threads(threads);

  if (o.world_size() == 1) {
    Group world = Group::self();
    set_default_group(world);
    return world;
  }

  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(o.master_port());
  store_options.isServer = o.rank() == 0;
  store_options.numWorkers = o.world_size();
  store_options.waitWorkers = true;
  store_options.timeout = o.timeout();
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(o.master_addr(), store_options);
  } catch (const std::exception& e) {
    TORCH_CHECK(
        false, "torchtp::init: rendezvous at ", o.master_addr(), ":",
        o.master_port(), " failed ", tag, " (world size ", o.world_size(),
        ", timeout ", o.timeout().count() / 1000, " s): ", e.what());
  }
  Group world(detail::make_gloo_communicator(
      store, o.rank(), o.world_size(), o.timeout(), o.socket_ifname(),
      is_loopback(o.master_addr())));
  set_default_group(world);
  return world;
}

Group init_from_env() {
  return init(options_from_env());
}

ParallelGroups make_parallel_groups(const Group& world, int tp) {
  TORCH_CHECK(
      tp >= 1 && world.size() % tp == 0,
      "torchtp::make_parallel_groups: tensor-parallel size (", tp,
      ") does not divide the world size (", world.size(), ") ", world.tag());
  const int tp_rank = world.rank() % tp;
  const int dp_rank = world.rank() / tp;
  Group tensor = world.split(/*color=*/dp_rank, /*key=*/tp_rank);
  Group data = world.split(/*color=*/tp_rank, /*key=*/dp_rank);
  return {world, tensor, data};
}

} // namespace torchtp
