#pragma once

#include "communicator.h"
#include "rendezvous.h"

#include <string>

namespace torchtp::detail {

/// Joins the job: the rendezvous store, the join, then the world's
/// communicator, through `backend` (a name `unknown_backend` accepts). Gloo
/// runs on `interface` when it is not empty, else on the local address
/// toward the master.
c10::intrusive_ptr<Communicator> connect_world(
    const Rendezvous& at,
    const std::string& backend,
    const std::string& interface);

} // namespace torchtp::detail
