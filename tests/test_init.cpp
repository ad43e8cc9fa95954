// Single-process tests of init: the rank and world size read from each
// launcher's environment, the checks on them, and joining twice. A process
// of its own, so init() here is the process's first.

#include <torchtp/torchtp.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <string>

#include <stdlib.h>

TEST(InitOptions, FromEnvironmentFallsBackToMpirunAndSlurm) {
  // Only the variables of one convention at a time are set.
  for (const char* v :
       {"RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
        "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK",
        "LOCAL_WORLD_SIZE", "TORCHTP_TIMEOUT_S"}) {
    unsetenv(v);
  }
  auto o = torchtp::options_from_env();
  EXPECT_EQ(o.rank(), 0);
  EXPECT_EQ(o.world_size(), 1);

  setenv("SLURM_PROCID", "3", 1);
  setenv("SLURM_NTASKS", "8", 1);
  o = torchtp::options_from_env();
  EXPECT_EQ(o.rank(), 3);
  EXPECT_EQ(o.world_size(), 8);

  setenv("OMPI_COMM_WORLD_RANK", "1", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  o = torchtp::options_from_env();
  EXPECT_EQ(o.rank(), 1); // mpirun wins over Slurm
  EXPECT_EQ(o.world_size(), 2);

  setenv("RANK", "5", 1);
  setenv("WORLD_SIZE", "6", 1);
  setenv("TORCHTP_TIMEOUT_S", "12", 1);
  o = torchtp::options_from_env();
  EXPECT_EQ(o.rank(), 5); // torchrun wins over both
  EXPECT_EQ(o.world_size(), 6);
  EXPECT_EQ(o.timeout(), std::chrono::seconds(12));

  setenv("WORLD_SIZE", "six", 1);
  EXPECT_THROW(torchtp::options_from_env(), c10::Error);
  for (const char* v :
       {"RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
        "SLURM_PROCID", "SLURM_NTASKS", "TORCHTP_TIMEOUT_S"}) {
    unsetenv(v);
  }
}

TEST(InitOptions, HalfAConventionOrAMissingMasterAcrossHostsIsRefused) {
  setenv("RANK", "1", 1); // WORLD_SIZE missing
  EXPECT_THROW(torchtp::options_from_env(), c10::Error);
  unsetenv("RANK");

  // Slurm across two hosts without MASTER_ADDR: refused at once, not after
  // the rendezvous timeout.
  unsetenv("MASTER_ADDR");
  setenv("SLURM_PROCID", "0", 1);
  setenv("SLURM_NTASKS", "4", 1);
  setenv("SLURM_NTASKS_PER_NODE", "2", 1);
  try {
    torchtp::options_from_env();
    ADD_FAILURE() << "did not raise";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("MASTER_ADDR"), std::string::npos);
  }
  setenv("MASTER_ADDR", "10.0.0.1", 1);
  EXPECT_EQ(torchtp::options_from_env().master_addr(), "10.0.0.1");
  EXPECT_EQ(torchtp::options_from_env().local_world_size(), 2);
  for (const char* v :
       {"MASTER_ADDR", "SLURM_PROCID", "SLURM_NTASKS",
        "SLURM_NTASKS_PER_NODE"}) {
    unsetenv(v);
  }

  // OpenMP's per-level list: the first level is ours.
  setenv("OMP_NUM_THREADS", "3,1", 1);
  EXPECT_EQ(torchtp::options_from_env().num_threads(), 3);
  unsetenv("OMP_NUM_THREADS");
}

TEST(Init, RejectsARankOutsideTheWorld) {
  EXPECT_THROW(
      torchtp::init(torchtp::InitOptions().rank(2).world_size(2)), c10::Error);
}

TEST(Init, JoiningTwiceReturnsTheSameWorld) {
  auto a = torchtp::init(torchtp::InitOptions());
  auto b = torchtp::init(torchtp::InitOptions());
  EXPECT_TRUE(a == b);
  EXPECT_THROW(
      torchtp::init(torchtp::InitOptions().rank(1).world_size(2)), c10::Error);
}
