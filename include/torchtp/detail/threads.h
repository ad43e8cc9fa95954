#pragma once

// How many intra-op threads each rank on a host gets when nobody said:
// the ranks of one host share its cores. torchtp-run exports it as the
// ranks' OMP_NUM_THREADS and init gives it to at::set_num_threads for a
// program started otherwise, so both must agree. Header-only and
// torch-free: the launcher links no libtorch.

#include <sched.h>
#include <unistd.h>

#include <algorithm>

namespace torchtp::detail {

/// CPUs this process may run on; the affinity mask is what a container or
/// taskset actually grants, unlike the machine-wide count.
inline int usable_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) {
      return n;
    }
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

/// Intra-op threads for each of `local_world_size` ranks on this host: an
/// equal share of the usable cores, at least one.
inline int threads_per_local_rank(int local_world_size) {
  return std::max(1, usable_cores() / std::max(1, local_world_size));
}

} // namespace torchtp::detail
