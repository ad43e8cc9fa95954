#include "torchtp/init.h"

#include "comm/backends.h"
#include "comm/world.h"
#include "torchtp/detail/blas_core.h"
#include "detail/check.h"
#include "torchtp/detail/threads.h"
#include "torchtp/failure.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <mutex>
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

// The integer `text` of variable `name`, or a c10::Error naming both.
int parse_int(const char* name, const std::string& text) {
  try {
    size_t used = 0;
    int value = std::stoi(text, &used);
    TORCH_CHECK(used == text.size(), "trailing characters");
    return value;
  } catch (const std::exception&) {
    TORCH_CHECK(
        false, "torchtp::init_from_env: ", name, "='", text,
        "' is not an integer");
  }
}

int env_int(const char* name, int fallback) {
  auto v = env(name);
  return v ? parse_int(name, *v) : fallback;
}

// torchtp-run selects the right OpenBLAS kernels before the ranks load
// OpenBLAS; a program started otherwise can only be told.
void warn_on_generic_blas(const InitOptions& o) {
  const char* set = std::getenv("OPENBLAS_CORETYPE");
  if (o.local_rank() != 0 || (set != nullptr && *set != '\0')) {
    return;
  }
  const std::string core = detail::openblas_core();
  const std::string better =
      detail::better_blas_core(core, detail::cpu_flags());
  if (!better.empty()) {
    TORCH_WARN(
        "torchtp: OpenBLAS does not recognise this CPU and runs its generic ",
        core,
        " kernels, 2-3x slower here; start the program with "
        "OPENBLAS_CORETYPE=",
        better, " (torchtp-run does this) ",
        detail::rank_label(o.rank(), o.world_size()));
  }
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
    TORCH_CHECK(
        env(rank_var).has_value() == env(size_var).has_value(),
        "torchtp::init_from_env: ", env(rank_var) ? rank_var : size_var,
        " is set but ", env(rank_var) ? size_var : rank_var,
        " is not; set both or neither");
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
      env_int(
          "OMPI_COMM_WORLD_LOCAL_SIZE",
          env_int("SLURM_NTASKS_PER_NODE", o.world_size()))));
  // The launcher's local layout decides threads and hosts: nonsense here
  // would surface later as a wrong split of the cores or of the job.
  // (A world size below 1 is init()'s to name.)
  TORCHTP_CHECK(
      o.world_size() < 1 ||
          (o.local_world_size() >= 1 && o.local_rank() >= 0 &&
           o.local_rank() < o.local_world_size()),
      "torchtp::init_from_env", detail::RankOf(o.rank(), o.world_size()),
      "local rank ", o.local_rank(), " of ", o.local_world_size(),
      " ranks on this host is out of range (LOCAL_RANK / LOCAL_WORLD_SIZE, "
      "or the launcher's own variables)");
  // mpirun and Slurm set no MASTER_ADDR: loopback is right only when every
  // rank is on this host; across hosts, waiting for the timeout is not.
  TORCHTP_CHECK(
      env("MASTER_ADDR").has_value() || o.local_world_size() >= o.world_size(),
      "torchtp::init_from_env", detail::RankOf(o.rank(), o.world_size()),
      "MASTER_ADDR is not set and the job spans several hosts (world size ",
      o.world_size(), ", ", o.local_world_size(),
      " on this host): set MASTER_ADDR (and MASTER_PORT) to rank 0's host");
  o.master_addr(env("MASTER_ADDR").value_or("127.0.0.1"));
  o.master_port(env_int("MASTER_PORT", 29500));
  o.timeout(std::chrono::seconds(env_int("TORCHTP_TIMEOUT_S", 300)));
  o.socket_ifname(env("GLOO_SOCKET_IFNAME").value_or(""));
  o.backend(env("TORCHTP_BACKEND").value_or("auto"));
  // A typo fails here, on every rank.
  const std::string unknown = detail::unknown_backend(o.backend());
  TORCH_CHECK(unknown.empty(), "torchtp: TORCHTP_BACKEND=", unknown);
  // OpenMP allows a list per nesting level ("4,2"): the first is ours.
  if (auto threads = env("OMP_NUM_THREADS")) {
    o.num_threads(
        parse_int("OMP_NUM_THREADS", threads->substr(0, threads->find(','))));
  }
  return o;
}

namespace {
constexpr const char* kInit = "torchtp::init";
std::mutex init_mutex;
c10::optional<Group> initialized; // the world of the first init()
} // namespace

Group init(const InitOptions& o) {
  const detail::RankOf me(o.rank(), o.world_size());
  std::lock_guard<std::mutex> lock(init_mutex);
  // A second rendezvous on the same port would fail or meet stale keys:
  // joining twice returns the job already joined.
  if (initialized.has_value()) {
    TORCHTP_CHECK(
        initialized->rank() == o.rank() &&
            initialized->size() == o.world_size(),
        kInit, me, "this process already joined as rank ", initialized->rank(),
        " of ", initialized->size(), ", not ", o.rank(), " of ",
        o.world_size());
    return *initialized;
  }
  TORCHTP_CHECK(
      o.world_size() >= 1, kInit, me, "world size ", o.world_size(),
      " must be at least 1");
  TORCHTP_CHECK(
      o.rank() >= 0 && o.rank() < o.world_size(), kInit, me, "rank ", o.rank(),
      " is outside the world of ", o.world_size());
  TORCHTP_CHECK(
      o.master_port() > 0 && o.master_port() < 65536, kInit, me, "master port ",
      o.master_port(), " is not a TCP port");
  TORCHTP_CHECK(
      o.timeout().count() > 0, kInit, me, "the timeout must be positive");

  // libtorch starts with one intra-op thread; ranks on one host share its
  // cores.
  int threads = o.num_threads();
  if (threads <= 0) {
    threads = detail::threads_per_local_rank(o.local_world_size());
  }
  at::set_num_threads(threads);
  warn_on_generic_blas(o);
  // An error that escapes main still tells the other ranks.
  detail::install_terminate_report();

  if (o.world_size() == 1) {
    initialized = Group::self();
    set_default_group(*initialized);
    return *initialized;
  }

  detail::Rendezvous at;
  at.rank = o.rank();
  at.world_size = o.world_size();
  at.master_addr = o.master_addr();
  at.master_port = o.master_port();
  at.timeout = o.timeout();
  Group world = detail::GroupAccess::make(detail::connect_world(
      at, o.backend().empty() ? "auto" : o.backend(), o.socket_ifname()));
  initialized = world;
  set_default_group(world);
  return world;
}

Group init_from_env() {
  return init(options_from_env());
}

ParallelGroups make_parallel_groups(const Group& world, int tp) {
  TORCHTP_CHECK(
      tp >= 1 && world.size() % tp == 0, "torchtp::make_parallel_groups", world,
      "tensor-parallel size (", tp, ") does not divide the world size (",
      world.size(), ")");
  // The degenerate layouts reuse the world: no second connection mesh.
  if (tp == world.size()) {
    return {world, world, Group::self()};
  }
  if (tp == 1) {
    return {world, Group::self(), world};
  }
  const int tp_rank = world.rank() % tp;
  const int dp_rank = world.rank() / tp;
  Group tensor = world.split(/*color=*/dp_rank, /*key=*/tp_rank);
  Group data = world.split(/*color=*/tp_rank, /*key=*/dp_rank);
  return {world, tensor, data};
}

} // namespace torchtp
