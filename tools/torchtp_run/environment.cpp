#include "environment.h"

#include "log.h"

#include "torchtp/detail/blas_core.h"
#include "torchtp/detail/threads.h"

#include <cstdlib>

namespace torchtp::launcher {

void select_blas_core() {
  const char* set = getenv("OPENBLAS_CORETYPE");
  if (set != nullptr && *set != '\0') {
    return;
  }
  const std::string core = torchtp::detail::openblas_core();
  const std::string better =
      torchtp::detail::better_blas_core(core, torchtp::detail::cpu_flags());
  if (!better.empty()) {
    setenv("OPENBLAS_CORETYPE", better.c_str(), 1);
    log_line(
        "OpenBLAS does not recognise this CPU and would use its generic " +
        core + " kernels; ranks run with OPENBLAS_CORETYPE=" + better +
        " (set OPENBLAS_CORETYPE yourself to choose)");
  }
}

std::string omp_num_threads(const Options& opts) {
  if (opts.omp_threads > 0)
    return std::to_string(opts.omp_threads);
  const char* env_omp = getenv("OMP_NUM_THREADS");
  if (env_omp && *env_omp)
    return env_omp;
  return std::to_string(
      torchtp::detail::threads_per_local_rank(opts.nproc_per_node));
}

void set_rank_environment(
    const Options& opts,
    int local_rank,
    const std::string& omp_threads,
    const std::string& error_file) {
  auto set = [](const char* key, long value) {
    setenv(key, std::to_string(value).c_str(), 1);
  };
  set("RANK", opts.rank(local_rank));
  set("WORLD_SIZE", opts.world_size());
  set("LOCAL_RANK", local_rank);
  set("LOCAL_WORLD_SIZE", opts.nproc_per_node);
  set("GROUP_RANK", opts.node_rank);
  set("MASTER_PORT", opts.master_port);
  set("TORCHTP_RUN", 1);
  setenv("MASTER_ADDR", opts.master_addr.c_str(), 1);
  setenv("OMP_NUM_THREADS", omp_threads.c_str(), 1);
  if (!error_file.empty())
    setenv("TORCHTP_ERROR_FILE", error_file.c_str(), 1);
  if (!opts.interface.empty())
    setenv("GLOO_SOCKET_IFNAME", opts.interface.c_str(), 1);
}

} // namespace torchtp::launcher
