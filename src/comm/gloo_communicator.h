#pragma once

#include "communicator.h"

#include <memory>
#include <string>
#include <vector>

namespace torchtp::detail {

class Connector;

/// A communicator over c10d's ProcessGroupGloo (TCP), for groups that span
/// hosts or when TORCHTP_BACKEND=gloo. Collective over `world_ranks`.
c10::intrusive_ptr<Communicator> make_gloo_communicator(
    const std::shared_ptr<Connector>& connector,
    const std::vector<int>& world_ranks,
    const std::string& name);

} // namespace torchtp::detail
