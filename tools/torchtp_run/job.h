#pragma once

// Runs the job on this host: starts the ranks, relays their output,
// forwards signals, and stops them all when one fails.

#include "options.h"

namespace torchtp::launcher {

/// Runs `opts.command` once per local rank until every rank has exited.
/// Returns the launcher's exit code: 0, the first failed rank's code
/// (128+N for signal N), or 128+N when the launcher got signal N.
int run_job(const Options& opts);

} // namespace torchtp::launcher
