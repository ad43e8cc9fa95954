#pragma once

// Element-wise reduction of n equal-length buffers, for the shared-memory
// communicator. Inputs are combined in the order given (rank order), so every
// rank that reduces the same block gets the same bits; 16-bit floats are
// accumulated in float32 and rounded once, as NCCL-style fp32 accumulation.

#include "communicator.h"

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace torchtp::detail {

/// out[i] = in[0][i] op in[1][i] op ... op in[n-1][i] for i < len. `out` may
/// be one of the inputs. NaN propagates through max and min, as in torch.
void reduce_buffers(
    void* out,
    const void* const* in,
    int n,
    int64_t len,
    c10::ScalarType dtype,
    ReduceOp op);

} // namespace torchtp::detail
