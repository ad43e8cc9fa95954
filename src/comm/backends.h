#pragma once

#include "communicator.h"

#include <memory>
#include <string>
#include <vector>

namespace torchtp::detail {

class Connector;

/// The registry of communicators: the one place that knows which backends
/// exist, which of them can carry a group, and which one "auto" picks.

/// "" when `name` names a backend ("auto" or a registered one), else the
/// message "'nccl' is not one of auto, gloo, shm".
std::string unknown_backend(const std::string& name);

/// Collective over `world_ranks`: the communicator of the group `name`
/// through `backend`, or for "auto" through the first registered backend
/// that can carry the group. Raises a `c10::Error` naming the other choices
/// when the backend asked for cannot carry the group.
c10::intrusive_ptr<Communicator> make_communicator(
    const std::shared_ptr<Connector>& connector,
    const std::vector<int>& world_ranks,
    const std::string& name,
    const std::string& backend);

} // namespace torchtp::detail
