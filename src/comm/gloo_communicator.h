#pragma once

#include "torchtp/detail/communicator.h"

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <string>

namespace torchtp::detail {

/// A communicator over c10d's ProcessGroupGloo, rendezvousing through
/// `store`. `interface` names the network interface to bind ("" picks
/// loopback when `loopback` is true, else the host's default address).
c10::intrusive_ptr<Communicator> make_gloo_communicator(
    const c10::intrusive_ptr<c10d::Store>& store,
    int rank,
    int size,
    std::chrono::milliseconds timeout,
    const std::string& interface,
    bool loopback);

} // namespace torchtp::detail
