#pragma once

#include "torchtp/group.h"

#include <torch/arg.h>

#include <chrono>
#include <string>

namespace torchtp {

/// Where this process stands in the job and how to reach the others.
/// `init_from_env()` fills it from the launcher's environment; set it by hand
/// to embed torchtp in a program with its own launcher.
struct InitOptions {
  /// Rank of this process, 0 <= rank < world_size.
  TORCH_ARG(int, rank) = 0;
  /// Number of processes in the job.
  TORCH_ARG(int, world_size) = 1;
  /// Rank among the processes of this host, and their number: they share the
  /// cores, so each takes cores / local_world_size intra-op threads.
  TORCH_ARG(int, local_rank) = 0;
  TORCH_ARG(int, local_world_size) = 1;
  /// Host and port of rank 0's TCPStore, where every rank meets.
  TORCH_ARG(std::string, master_addr) = "127.0.0.1";
  TORCH_ARG(int, master_port) = 29500;
  /// Limit for every wait of the rendezvous (the ranks that have not joined
  /// by then are named) and for every collective (TORCHTP_TIMEOUT_S).
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::seconds(300);
  /// Network interface for Gloo (GLOO_SOCKET_IFNAME); empty: the local
  /// address of the route to `master_addr` (loopback when the master is on
  /// this host and named by a loopback address).
  TORCH_ARG(std::string, socket_ifname) = "";
  /// Communicator of each group (TORCHTP_BACKEND): "auto" uses shared memory
  /// for a group whose ranks are all on one host and Gloo otherwise; "shm"
  /// or "gloo" forces one.
  TORCH_ARG(std::string, backend) = "auto";
  /// Intra-op threads; 0: OMP_NUM_THREADS, else cores / local_world_size.
  TORCH_ARG(int, num_threads) = 0;
};

/// Reads the launcher's environment: torchrun's RANK, WORLD_SIZE, LOCAL_RANK,
/// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; else mpirun's
/// OMPI_COMM_WORLD_RANK/SIZE (or PMI_RANK/PMI_SIZE); else Slurm's
/// SLURM_PROCID/SLURM_NTASKS; else a single process. Also TORCHTP_TIMEOUT_S,
/// TORCHTP_BACKEND, GLOO_SOCKET_IFNAME and OMP_NUM_THREADS. Bad values raise
/// `c10::Error`.
InitOptions options_from_env();

/// Joins the job described by `options` (rendezvous through a TCPStore on
/// rank 0, then a shared-memory or Gloo communicator; none for a single
/// process), sets the intra-op thread count and the default group, and
/// returns the world group.
Group init(const InitOptions& options);

/// `init(options_from_env())`: the usual entry point, the same binary runs
/// under `torchtp-run`, torchrun, mpirun, Slurm or alone.
///
/// Example:
/// ```
///   int main() {
///     torchtp::Group world = torchtp::init_from_env();
///     torchtp::ColumnParallelLinear fc(
///         torchtp::ColumnParallelLinearOptions(1024, 4096));
///   }
/// ```
Group init_from_env();

/// Data x tensor parallel groups, built as Megatron's
/// `initialize_model_parallel` builds them: tensor-parallel groups are runs of
/// `tensor_parallel_size` consecutive ranks (tp_rank = rank % tp,
/// dp_rank = rank / tp); a data-parallel group holds the ranks with the same
/// tp_rank.
struct ParallelGroups {
  Group world;
  Group tensor;
  Group data;
};

/// Collective over `world`. Raises `c10::Error` when `tensor_parallel_size`
/// does not divide the world size.
ParallelGroups make_parallel_groups(
    const Group& world, int tensor_parallel_size);

} // namespace torchtp
