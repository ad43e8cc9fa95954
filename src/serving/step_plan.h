#pragma once

// What rank 0 of a serving engine decided for one step, in the form every
// rank needs to run it: the flattened batch and each sequence's sampling.

#include "torchtp/group.h"
#include "torchtp/kv_blocks.h"

#include <cstdint>
#include <vector>

namespace torchtp::detail {

struct StepPlan {
  enum class Kind : int64_t { idle = 0, run = 1, shutdown = 2 };
  Kind kind = Kind::idle;
  PagedBatch batch;
  /// How each sequence (a row of `batch.block_tables`) picks its token.
  struct Sequence {
    int64_t request = -1;
    /// Its first step: its generator is made from `seed`.
    bool starts = false;
    uint64_t seed = 0;
    bool greedy = true;
    double temperature = 1.0;
    int64_t top_k = 0;
    double top_p = 1.0;
    /// It picks a token this step (false while chunks of its prompt are
    /// still to come).
    bool samples = true;
  };
  std::vector<Sequence> sequences;
  /// Requests that ended since the last step that ran: their generators go.
  std::vector<int64_t> ended;
};

/// Rank 0's `plan` onto every rank of `group` (two broadcasts: the sizes,
/// then one int64 tensor of everything).
void broadcast_plan(StepPlan& plan, const Group& group);

} // namespace torchtp::detail
