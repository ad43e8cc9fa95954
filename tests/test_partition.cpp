// Single-process tests of Partition and of the layers' initialisation.

#include <torchtp/detail/linear_init.h>
#include <torchtp/torchtp.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

TEST(Partition, EqualPartsHaveConsecutiveOffsets) {
  for (int64_t parts : {1, 2, 3, 4, 8}) {
    for (int64_t rank = 0; rank < parts; ++rank) {
      torchtp::Partition p(24, parts, rank, "x");
      EXPECT_EQ(p.local_size(), 24 / parts);
      EXPECT_EQ(p.local_offset(), rank * (24 / parts));
      EXPECT_TRUE(p.is_even());
      int64_t total = 0;
      for (int64_t q = 0; q < parts; ++q) {
        EXPECT_EQ(p.offset(q), total);
        total += p.size(q);
      }
      EXPECT_EQ(total, 24);
    }
  }
}

TEST(Partition, SizeThatDoesNotDivideNamesBothNumbersAndTheRank) {
  try {
    torchtp::Partition p(10, 4, 1, "torchtp::Thing: out_features");
    FAIL() << "did not raise";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_NE(msg.find("torchtp::Thing: out_features (10)"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("tensor-parallel size (4)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[rank 1/4]"), std::string::npos) << msg;
  }
}

TEST(Partition, NarrowTakesThisRanksSlice) {
  auto full = torch::arange(12).reshape({3, 4});
  torchtp::Partition p(4, 2, 1, "x");
  EXPECT_TRUE(torch::equal(p.narrow(full, 1), full.narrow(1, 2, 2)));
  EXPECT_THROW(p.narrow(full, 0), c10::Error);
}

TEST(Partition, RejectsARankOutsideTheParts) {
  EXPECT_THROW(torchtp::Partition(8, 2, 2, "x"), c10::Error);
  EXPECT_THROW(torchtp::Partition(8, 0, 0, "x"), c10::Error);
}

TEST(LinearInit, EqualsTorchNnLinearForTheSameSeed) {
  for (bool bias : {true, false}) {
    torch::manual_seed(1234);
    torch::nn::Linear ref(torch::nn::LinearOptions(12, 20).bias(bias));
    torch::manual_seed(1234);
    auto [w, b] = torchtp::detail::linear_init(12, 20, bias, torch::kFloat);
    EXPECT_TRUE(torch::equal(w, ref->weight));
    EXPECT_EQ(b.defined(), bias);
    if (bias) {
      EXPECT_TRUE(torch::equal(b, ref->bias));
    }
  }
}

TEST(LinearInit, ReducedPrecisionIsTheRoundedFloatDraw) {
  torch::manual_seed(7);
  auto [wf, bf] = torchtp::detail::linear_init(8, 4, true, torch::kFloat);
  torch::manual_seed(7);
  auto [wb, bb] = torchtp::detail::linear_init(8, 4, true, torch::kBFloat16);
  EXPECT_EQ(wb.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(wb, wf.to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(bb, bf.to(torch::kBFloat16)));
}

TEST(Group, SelfGroupIsTheIdentity) {
  auto g = torchtp::Group::self();
  EXPECT_EQ(g.rank(), 0);
  EXPECT_EQ(g.size(), 1);
  auto t = torch::arange(6.0).reshape({2, 3});
  auto before = t.clone();
  g.all_reduce(t);
  EXPECT_TRUE(torch::equal(t, before));
  EXPECT_TRUE(torch::equal(g.all_gather(t, 1), before));
  EXPECT_TRUE(torch::equal(g.reduce_scatter(t, 0), before));
  EXPECT_EQ(g.split(5).size(), 1);
}

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
  for (const char* v : {"MASTER_ADDR", "SLURM_PROCID", "SLURM_NTASKS",
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
