#include "world.h"

#include "connector.h"
#include "gloo_network.h"
#include "job_failure.h"
#include "rendezvous.h"

#include <numeric>

namespace torchtp::detail {

c10::intrusive_ptr<Communicator> connect_world(
    const Rendezvous& at,
    const std::string& backend,
    const std::string& interface) {
  const RankOf me(at.rank, at.world_size);
  auto store = open_store(at);
  // From here a failure of this rank reaches the others through the store.
  JobFailure::get().attach(store, at.rank, at.world_size);
  // Every rank learns where every rank runs and listens: a group's
  // communicator is then chosen alike on all its members.
  const std::string address =
      interface.empty() ? gloo_address_toward(at.master_addr, me) : "";
  auto records = join_job(*store, at, address);
  check_gloo_addresses_reachable(records, at.master_addr, me);
  auto connector = std::make_shared<Connector>(
      store, at, backend, interface, std::move(records));
  std::vector<int> everyone(at.world_size);
  std::iota(everyone.begin(), everyone.end(), 0);
  return connector->connect(everyone, "world");
}

} // namespace torchtp::detail
