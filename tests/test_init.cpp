// Single-process tests of init: the rank and world size read from each
// launcher's environment, the checks on them, and joining twice. A process
// of its own, so init() here is the process's first.

#include <torchtp/torchtp.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

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

// Every variable init_from_env reads, malformed or out of range: a
// c10::Error naming the variable or the value, before any rendezvous (so
// none of these rows can hang). Runs before any successful init.
TEST(InitFromEnv, MalformedOrOutOfRangeVariablesAreRefused) {
  const char* all[] = {
      "RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
      "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "LOCAL_RANK",
      "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHTP_TIMEOUT_S",
      "TORCHTP_BACKEND", "OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME"};
  struct Row {
    std::vector<std::pair<const char*, const char*>> vars;
    const char* needle;
  };
  const std::vector<Row> rows = {
      {{{"RANK", "abc"}, {"WORLD_SIZE", "2"}}, "RANK='abc' is not an integer"},
      {{{"RANK", "1x"}, {"WORLD_SIZE", "2"}}, "RANK='1x' is not an integer"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "0"}}, "world size 0 must be at least 1"},
      {{{"RANK", "-1"}, {"WORLD_SIZE", "2"}}, "rank -1 is outside the world"},
      {{{"RANK", "2"}, {"WORLD_SIZE", "2"}}, "rank 2 is outside the world"},
      {{{"RANK", "0"}}, "RANK is set but WORLD_SIZE is not"},
      {{{"OMPI_COMM_WORLD_SIZE", "2"}},
       "OMPI_COMM_WORLD_SIZE is set but OMPI_COMM_WORLD_RANK is not"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_PORT", "70000"}},
       "master port 70000 is not a TCP port"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_PORT", "http"}},
       "MASTER_PORT='http' is not an integer"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"TORCHTP_TIMEOUT_S", "0"}},
       "the timeout must be positive"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"TORCHTP_TIMEOUT_S", "5s"}},
       "TORCHTP_TIMEOUT_S='5s' is not an integer"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"TORCHTP_BACKEND", "nccl2"}},
       "'nccl2' is not one of auto, gloo, shm"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"OMP_NUM_THREADS", "four"}},
       "OMP_NUM_THREADS='four' is not an integer"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"LOCAL_WORLD_SIZE", "0"}},
       "LOCAL_WORLD_SIZE"},
      {{{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"LOCAL_RANK", "3"},
        {"LOCAL_WORLD_SIZE", "2"}},
       "LOCAL_RANK"},
      {{{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"},
        {"SLURM_NTASKS_PER_NODE", "2"}},
       "MASTER_ADDR is not set"},
  };
  for (const auto& row : rows) {
    for (const char* v : all) {
      unsetenv(v);
    }
    unsetenv("SLURM_NTASKS_PER_NODE");
    std::string set;
    for (const auto& [k, v] : row.vars) {
      setenv(k, v, 1);
      set += std::string(k) + "=" + v + " ";
    }
    SCOPED_TRACE(set);
    try {
      torchtp::init(torchtp::options_from_env());
      ADD_FAILURE() << "did not raise";
    } catch (const c10::Error& e) {
      const std::string msg = e.what_without_backtrace();
      EXPECT_NE(msg.find(row.needle), std::string::npos) << msg;
    }
  }
  for (const char* v : all) {
    unsetenv(v);
  }
  unsetenv("SLURM_NTASKS_PER_NODE");
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
