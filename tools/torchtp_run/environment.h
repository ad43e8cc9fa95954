#pragma once

// What each rank finds in its environment: its place in the job (the
// variables torchrun sets), its share of the host's cores and the OpenBLAS
// kernels it should use.

#include "options.h"

#include <string>

namespace torchtp::launcher {

/// Gives the ranks the OpenBLAS kernels this CPU runs best when OpenBLAS
/// would fall back to its generic ones, by setting OPENBLAS_CORETYPE in the
/// launcher's own environment, which the ranks inherit; a user's
/// OPENBLAS_CORETYPE stands.
void select_blas_core();

/// OMP_NUM_THREADS for every rank: --omp-threads, else the launcher's own
/// value, else the ranks' share of this host's cores.
std::string omp_num_threads(const Options& opts);

/// In the forked child, before exec: the variables --help lists (RANK,
/// WORLD_SIZE, ..., TORCHTP_RUN), plus TORCHTP_ERROR_FILE when
/// `error_file` is not empty.
void set_rank_environment(
    const Options& opts,
    int local_rank,
    const std::string& omp_threads,
    const std::string& error_file);

} // namespace torchtp::launcher
