#pragma once

#include "communicator.h"

#include <memory>
#include <string>
#include <vector>

namespace torchtp::detail {

class Connector;

/// A communicator over shared memory, for groups whose ranks are all on this
/// host. Collective over `world_ranks`; raises a `c10::Error` when a member
/// cannot map the group's segment.
c10::intrusive_ptr<Communicator> make_shm_communicator(
    const std::shared_ptr<Connector>& connector,
    const std::vector<int>& world_ranks,
    const std::string& name);

} // namespace torchtp::detail
