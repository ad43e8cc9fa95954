#pragma once

#include <cstdint>

namespace torchtp::detail {

/// Bytes this process has read from safetensors files so far (headers and
/// data, every SafetensorsReader): how the tests check that a rank loading
/// a checkpoint reads the bytes of its own shards and nothing else.
uint64_t safetensors_bytes_read();

} // namespace torchtp::detail
