#include "rendezvous.h"

#include "detail/check.h"

#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

namespace torchtp::detail {
namespace {

constexpr const char* kJoinComponent = "torchtp::init";

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

constexpr const char* kJoined = "torchtp/joined";
constexpr const char* kJoinError = "torchtp/join_error";
constexpr const char* kJoinErrorSeen = "torchtp/join_error_seen";

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
    const auto linger = Clock::now() + kStoreServerLinger;
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

std::string ranks_by_host(const std::map<std::string, std::vector<int>>& m) {
  std::string out;
  for (const auto& [host, ranks] : m) {
    out += (out.empty() ? "" : "; ") + ranks_text(ranks) + " on " + host;
  }
  return out;
}

bool spans_hosts(const std::vector<JoinRecord>& records) {
  return std::any_of(records.begin(), records.end(), [&](const auto& r) {
    return r.host_key != records[0].host_key;
  });
}

c10::intrusive_ptr<c10d::Store> open_store(const Rendezvous& at) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(at.master_port);
  options.isServer = at.rank == 0;
  options.numWorkers = at.world_size;
  // join_job waits for the workers instead: within the same timeout, and
  // naming the ranks that never came.
  options.waitWorkers = false;
  options.timeout = at.timeout;
  try {
    return c10::make_intrusive<c10d::TCPStore>(at.master_addr, options);
  } catch (const std::exception& e) {
    const auto* error = dynamic_cast<const c10::Error*>(&e);
    TORCHTP_CHECK(
        false, kJoinComponent, RankOf(at.rank, at.world_size),
        "rendezvous at ", at.master_addr, ":", at.master_port,
        " failed (world size ", at.world_size, ", timeout ",
        at.timeout.count() / 1000,
        " s): ", error ? error->what_without_backtrace() : e.what());
  }
}

std::vector<JoinRecord> join_job(
    c10d::Store& store, const Rendezvous& at, const std::string& address) {
  const RankOf me(at.rank, at.world_size);
  const JoinRecord mine{at.world_size, address, host_key()};
  std::vector<JoinRecord> records;
  std::string problem;
  try {
    problem = gather_records(store, at.rank, mine, at.timeout, records);
  } catch (const std::exception& e) {
    const auto* error = dynamic_cast<const c10::Error*>(&e);
    TORCHTP_CHECK(
        false, kJoinComponent, me,
        "joining the job through the store at MASTER_ADDR ", at.master_addr,
        " failed: ", error ? error->what_without_backtrace() : e.what(),
        " (rank 0 exited, or another program serves MASTER_PORT?)");
  }
  TORCHTP_CHECK(problem.empty(), kJoinComponent, me, problem);
  return records;
}

} // namespace torchtp::detail
