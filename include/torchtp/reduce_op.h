#pragma once

namespace torchtp {

/// Reductions a collective can apply.
enum class ReduceOp { sum, max, min };

} // namespace torchtp
