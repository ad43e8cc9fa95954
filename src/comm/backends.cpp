#include "backends.h"

#include "connector.h"

#include "detail/check.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <sstream>

namespace torchtp::detail {

// Each backend's factory, defined with its communicator: collective over
// `world_ranks`, the members of the group `name`.
c10::intrusive_ptr<Communicator> make_shm_communicator(
    const std::shared_ptr<Connector>& connector,
    const std::vector<int>& world_ranks,
    const std::string& name);
c10::intrusive_ptr<Communicator> make_gloo_communicator(
    const std::shared_ptr<Connector>& connector,
    const std::vector<int>& world_ranks,
    const std::string& name);

namespace {

// "" when a backend can carry a group of `world_ranks`, else why not.
using Reach = std::string (*)(
    const std::vector<JoinRecord>& records, const std::vector<int>& world_ranks);

std::string any_ranks(const std::vector<JoinRecord>&, const std::vector<int>&) {
  return "";
}

std::string ranks_of_one_host(
    const std::vector<JoinRecord>& records, const std::vector<int>& world_ranks) {
  const std::string& first = records[world_ranks[0]].host_key;
  if (std::all_of(world_ranks.begin(), world_ranks.end(), [&](int r) {
        return records[r].host_key == first;
      })) {
    return "";
  }
  std::ostringstream hosts;
  for (int r : world_ranks) {
    hosts << (r == world_ranks[0] ? "" : ", ") << "rank " << r << " on "
          << records[r].host();
  }
  return "spans hosts (" + hosts.str() +
         "); shared memory works within one host";
}

struct BackendEntry {
  const char* name;
  Reach cannot_carry;
  c10::intrusive_ptr<Communicator> (*make)(
      const std::shared_ptr<Connector>&,
      const std::vector<int>&,
      const std::string&);
};

// Every backend, in the order "auto" tries them: the fastest that can carry
// the group wins. Adding one (MPI, NCCL) means its communicator in its own
// file under src/comm/ (a ConnectedCommunicator and its make_ function,
// declared above; a stub that raises when CMake finds no library), its .cpp
// in CMakeLists.txt, and one line here: nothing else names backends.
const BackendEntry kBackends[] = {
    {"shm", ranks_of_one_host, make_shm_communicator},
    {"gloo", any_ranks, make_gloo_communicator},
};

const BackendEntry* find_backend(const std::string& name) {
  for (const auto& b : kBackends) {
    if (name == b.name) {
      return &b;
    }
  }
  return nullptr;
}

} // namespace

std::string unknown_backend(const std::string& name) {
  if (name == "auto" || find_backend(name) != nullptr) {
    return "";
  }
  std::vector<std::string> names;
  for (const auto& b : kBackends) {
    names.emplace_back(b.name);
  }
  std::sort(names.begin(), names.end());
  std::string choices = "auto";
  for (const auto& n : names) {
    choices += ", " + n;
  }
  return "'" + name + "' is not one of " + choices;
}

c10::intrusive_ptr<Communicator> make_communicator(
    const std::shared_ptr<Connector>& connector,
    const std::vector<int>& world_ranks,
    const std::string& name,
    const std::string& backend) {
  const auto& records = connector->records();
  if (backend == "auto") {
    for (const auto& b : kBackends) {
      if (b.cannot_carry(records, world_ranks).empty()) {
        return b.make(connector, world_ranks, name);
      }
    }
    TORCH_INTERNAL_ASSERT(false, "no backend can carry group ", name);
  }
  const BackendEntry* chosen = find_backend(backend);
  TORCH_CHECK(chosen != nullptr, "torchtp: ", unknown_backend(backend));
  const std::string why = chosen->cannot_carry(records, world_ranks);
  if (!why.empty()) {
    std::string others = "auto";
    for (const auto& b : kBackends) {
      if (&b != chosen && b.cannot_carry(records, world_ranks).empty()) {
        others += std::string(" or ") + b.name;
      }
    }
    TORCH_CHECK(
        false, "torchtp: backend ", backend, " but group ", name, " ", why,
        ": use ", others, " ",
        rank_label(connector->world_rank(), connector->world_size()));
  }
  return chosen->make(connector, world_ranks, name);
}

} // namespace torchtp::detail
