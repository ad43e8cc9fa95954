#pragma once

#include <cstdint>
#include <string>

namespace torchtp::detail {

/// The tag every torchtp error message ends with: "[rank r/ws]". One helper so
/// that messages from layers, mappings and communicators cannot drift apart.
inline std::string rank_tag(int64_t rank, int64_t world_size) {
  return "[rank " + std::to_string(rank) + "/" + std::to_string(world_size) +
         "]";
}

} // namespace torchtp::detail
