#include "connector.h"

#include "backends.h"
#include "job_failure.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace torchtp::detail {

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

Connector::Connector(
    c10::intrusive_ptr<c10d::Store> store,
    const Rendezvous& at,
    std::string backend,
    std::string interface,
    std::vector<JoinRecord> records)
    : store_(std::move(store)),
      world_rank_(at.rank),
      world_size_(at.world_size),
      timeout_(at.timeout),
      backend_(std::move(backend)),
      interface_(std::move(interface)),
      master_addr_(at.master_addr),
      records_(std::move(records)),
      spans_hosts_(detail::spans_hosts(records_)) {}

c10::intrusive_ptr<Communicator> Connector::connect(
    const std::vector<int>& world_ranks,
    const std::string& name,
    const std::string& backend) {
  auto comm = make_communicator(
      shared_from_this(), world_ranks, name,
      backend.empty() ? backend_ : backend);
  // Every communicator of the job is broken when this process reports a
  // failure (torchtp::report_failure).
  JobFailure::get().add(comm);
  return comm;
}

} // namespace torchtp::detail
