// Collectives of torchtp::Group against closed-form results, at whatever
// world size the launcher gives (CTest runs 1, 2, 3 and 4).

#include "test_util.h"

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <thread>

using torchtp::testing::all_close;
using torchtp::testing::raises_with;
using torchtp::testing::world;

namespace {

// What rank r contributes in the tests below: distinct per rank and element.
torch::Tensor contribution(int r, torch::IntArrayRef shape, torch::Dtype dt) {
  auto n = c10::multiply_integers(shape);
  return (torch::arange(n, torch::kDouble).reshape(shape) + 100.0 * r).to(dt);
}

const std::vector<torch::Dtype> kDtypes = {
    torch::kFloat, torch::kDouble, torch::kBFloat16, torch::kLong};

// Ranks per host as the launcher lays them out (consecutive ranks on one
// host); the multi-host test bed runs this file on 2 hosts x 2 ranks.
int ranks_per_host(const torchtp::Group& g) {
  const char* local = std::getenv("LOCAL_WORLD_SIZE");
  return local ? std::atoi(local) : g.size();
}

bool spans_hosts(const torchtp::Group& g) {
  return ranks_per_host(g) < g.size();
}

} // namespace

TEST(Group, RankAndSizeMatchTheLauncher) {
  auto g = world();
  const char* size = std::getenv("WORLD_SIZE");
  EXPECT_EQ(g.size(), size ? std::atoi(size) : 1);
  EXPECT_GE(g.rank(), 0);
  EXPECT_LT(g.rank(), g.size());
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

TEST(Group, AllReduceSumIsTheSumOfRanks) {
  auto g = world();
  for (auto dt : kDtypes) {
    auto t = torch::full({3, 5}, g.rank() + 1, dt);
    g.all_reduce(t);
    const double expected = g.size() * (g.size() + 1) / 2.0;
    EXPECT_TRUE(all_close(t, torch::full({3, 5}, expected, dt)))
        << c10::toString(dt);
    EXPECT_EQ(t.scalar_type(), dt);
  }
}

TEST(Group, AllReduceMaxAndMin) {
  auto g = world();
  for (auto dt : kDtypes) {
    auto hi = torch::full({4}, g.rank(), dt);
    g.all_reduce(hi, torchtp::ReduceOp::max);
    EXPECT_TRUE(all_close(hi, torch::full({4}, g.size() - 1, dt)));
    auto lo = torch::full({4}, g.rank() + 7, dt);
    g.all_reduce(lo, torchtp::ReduceOp::min);
    EXPECT_TRUE(all_close(lo, torch::full({4}, 7, dt)));
  }
}

TEST(Group, AllReduceWritesBackIntoANonContiguousTensor) {
  auto g = world();
  auto base = torch::zeros({4, 6}, torch::kDouble);
  auto view = base.t(); // [6, 4], not contiguous
  view.copy_(contribution(g.rank(), {6, 4}, torch::kDouble));
  g.all_reduce(view);
  auto expected = torch::zeros({6, 4}, torch::kDouble);
  for (int r = 0; r < g.size(); ++r) {
    expected += contribution(r, {6, 4}, torch::kDouble);
  }
  EXPECT_TRUE(all_close(base.t(), expected));
}

TEST(Group, AllGatherConcatenatesInRankOrderAlongAnyDim) {
  auto g = world();
  const std::vector<int64_t> shape = {2, 3, 4};
  for (auto dt : kDtypes) {
    for (int64_t dim : {0, 1, 2, -1, -2}) {
      auto mine = contribution(g.rank(), shape, dt);
      std::vector<torch::Tensor> all;
      for (int r = 0; r < g.size(); ++r) {
        all.push_back(contribution(r, shape, dt));
      }
      auto got = g.all_gather(mine, dim);
      EXPECT_TRUE(all_close(got, torch::cat(all, dim)))
          << "dim " << dim << " " << c10::toString(dt);
      EXPECT_EQ(got.scalar_type(), dt);
    }
  }
}

TEST(Group, ReduceScatterKeepsThisRanksPartOfTheSum) {
  auto g = world();
  for (auto dt : kDtypes) {
    for (int64_t dim : {0, 1, -1}) {
      std::vector<int64_t> shape = {2, 3, 5};
      shape[dim < 0 ? 2 : dim] *= g.size();
      auto sum = torch::zeros(shape, torch::kDouble);
      for (int r = 0; r < g.size(); ++r) {
        sum += contribution(r, shape, torch::kDouble);
      }
      auto got = g.reduce_scatter(contribution(g.rank(), shape, dt), dim);
      auto expected = sum.chunk(g.size(), dim)[g.rank()].to(dt);
      EXPECT_TRUE(all_close(got, expected))
          << "dim " << dim << " " << c10::toString(dt);
    }
  }
}

TEST(Group, ReduceScatterMaxAndMin) {
  auto g = world();
  for (auto dt : kDtypes) {
    auto t = contribution(g.rank(), {2 * g.size(), 3}, dt);
    auto hi = g.reduce_scatter(t, 0, torchtp::ReduceOp::max);
    auto lo = g.reduce_scatter(t, 0, torchtp::ReduceOp::min);
    auto part = [&](int r) {
      return contribution(r, {2 * g.size(), 3}, dt)
          .chunk(g.size(), 0)[g.rank()];
    };
    EXPECT_TRUE(all_close(hi, part(g.size() - 1))) << c10::toString(dt);
    EXPECT_TRUE(all_close(lo, part(0))) << c10::toString(dt);
    EXPECT_EQ(hi.scalar_type(), dt);
  }
}

TEST(Group, HalfPrecisionSumsInFloat32) {
  auto g = world();
  // 2048 + 1 is not a float16: summed in float16 on the wire, rank 0's 2048
  // would swallow every 1; summed in float32 and rounded once, it is kept
  // until the final rounding.
  auto t = torch::full({4}, g.rank() == 0 ? 2048.0 : 1.0, torch::kHalf);
  g.all_reduce(t);
  auto exact = torch::full({4}, 2048.0 + (g.size() - 1), torch::kFloat);
  EXPECT_TRUE(torch::equal(t, exact.to(torch::kHalf)));
}

TEST(Group, UnsupportedDtypeIsNamedBeforeAnyCommunication) {
  auto g = world();
  auto b = torch::ones({3}, torch::kBool);
  EXPECT_TRUE(raises_with(
      [&] { g.all_reduce(b); }, {"Bool", "not supported", g.rank_label()}));
}

TEST(Group, ReduceScatterOfASizeThatDoesNotDivideRaises) {
  auto g = world();
  if (g.size() == 1) {
    // Everything divides by one: the call must succeed.
    EXPECT_NO_THROW(g.reduce_scatter(torch::ones({5}), 0));
    return;
  }
  auto t = torch::ones({g.size() + 1, 2});
  EXPECT_TRUE(raises_with(
      [&] { g.reduce_scatter(t, 0); },
      {"not divisible", std::to_string(g.size() + 1), g.rank_label()}));
}

TEST(Group, BroadcastCopiesTheRootsTensor) {
  auto g = world();
  for (auto dt : kDtypes) {
    for (int root = 0; root < g.size(); ++root) {
      auto t = contribution(g.rank(), {3, 2}, dt);
      g.broadcast(t, root);
      EXPECT_TRUE(all_close(t, contribution(root, {3, 2}, dt)));
    }
  }
  auto t = torch::zeros({1});
  EXPECT_TRUE(
      raises_with([&] { g.broadcast(t, g.size()); }, {"root", g.rank_label()}));
}

TEST(Group, AsyncVariantsReturnTheResultOnWait) {
  auto g = world();
  auto a = torch::full({8}, 1.0);
  auto wa = g.all_reduce_async(a);
  auto wg = g.all_gather_async(torch::full({2}, double(g.rank())), 0);
  auto ws = g.reduce_scatter_async(torch::ones({2 * g.size()}), 0);
  auto b = torch::full({3}, double(g.rank()));
  auto wb = g.broadcast_async(b, 0);
  EXPECT_TRUE(all_close(wa.wait(), torch::full({8}, double(g.size()))));
  EXPECT_TRUE(wa.is_completed());
  EXPECT_TRUE(all_close(a, torch::full({8}, double(g.size()))));
  std::vector<torch::Tensor> parts;
  for (int r = 0; r < g.size(); ++r) {
    parts.push_back(torch::full({2}, double(r)));
  }
  EXPECT_TRUE(all_close(wg.wait(), torch::cat(parts)));
  EXPECT_TRUE(all_close(ws.wait(), torch::full({2}, double(g.size()))));
  EXPECT_TRUE(all_close(wb.wait(), torch::zeros({3})));
  // Waiting twice gives the same result.
  EXPECT_TRUE(all_close(wg.wait(), torch::cat(parts)));

  // A caller can poll for completion without waiting.
  auto p = torch::ones({4});
  auto wp = g.all_reduce_async(p);
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!wp.is_completed() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(wp.is_completed()) << "polling never saw the all-reduce finish";
  EXPECT_TRUE(all_close(wp.wait(), torch::full({4}, double(g.size()))));
}

TEST(Group, BarrierReturnsOnEveryRank) {
  auto g = world();
  for (int i = 0; i < 3; ++i) {
    g.barrier();
  }
  auto w = g.barrier_async();
  EXPECT_FALSE(w.wait().defined()) << "a barrier has no result";
  EXPECT_TRUE(w.is_completed());
}

TEST(Group, SplitByParityReducesWithinEachHalf) {
  auto g = world();
  auto half = g.split(/*color=*/g.rank() % 2);
  int expected_size = 0;
  double expected_sum = 0;
  for (int r = 0; r < g.size(); ++r) {
    if (r % 2 == g.rank() % 2) {
      ++expected_size;
      expected_sum += r;
    }
  }
  EXPECT_EQ(half.size(), expected_size);
  EXPECT_EQ(half.rank(), g.rank() / 2);
  auto t = torch::full({2}, double(g.rank()));
  half.all_reduce(t);
  EXPECT_TRUE(all_close(t, torch::full({2}, expected_sum)));
}

TEST(Group, SplitKeyOrdersTheNewRanks) {
  auto g = world();
  auto reversed = g.split(/*color=*/0, /*key=*/g.size() - 1 - g.rank());
  EXPECT_EQ(reversed.rank(), g.size() - 1 - g.rank());
  auto got = reversed.all_gather(torch::full({1}, double(g.rank())), 0);
  auto expected = torch::arange(g.size() - 1, -1, -1, torch::kDouble);
  EXPECT_TRUE(all_close(got, expected));
}

TEST(ParallelGroups, TensorGroupsAreConsecutiveRanks) {
  auto g = world();
  for (int tp = 1; tp <= g.size(); ++tp) {
    if (g.size() % tp != 0) {
      continue;
    }
    auto pg = torchtp::make_parallel_groups(g, tp);
    EXPECT_EQ(pg.tensor.size(), tp);
    EXPECT_EQ(pg.tensor.rank(), g.rank() % tp);
    EXPECT_EQ(pg.data.size(), g.size() / tp);
    EXPECT_EQ(pg.data.rank(), g.rank() / tp);
    // The tensor group of rank r holds ranks tp*(r/tp) .. tp*(r/tp)+tp-1.
    auto members = pg.tensor.all_gather(torch::full({1}, double(g.rank())), 0);
    auto first = double(g.rank() / tp * tp);
    EXPECT_TRUE(all_close(
        members, torch::arange(first, first + tp, 1.0, torch::kDouble)));
    auto dp = pg.data.all_gather(torch::full({1}, double(g.rank())), 0);
    EXPECT_TRUE(all_close(
        dp, torch::arange(
                double(g.rank() % tp), g.size(), double(tp), torch::kDouble)));
  }
}

TEST(ParallelGroups, SizeThatDoesNotDivideTheWorldRaises) {
  auto g = world();
  EXPECT_TRUE(raises_with(
      [&] { torchtp::make_parallel_groups(g, g.size() + 1); },
      {"does not divide", g.rank_label()}));
}

TEST(Group, DebugChecksNameTheRankThatDisagrees) {
  auto g = world();
  torchtp::set_debug_checks(true);
  auto same = torch::ones({2, 3});
  EXPECT_NO_THROW(g.all_reduce(same));
  if (g.size() > 1) {
    // Rank 0 passes one element more than the others.
    auto t = torch::ones({g.rank() == 0 ? 4 : 3});
    EXPECT_TRUE(raises_with(
        [&] { g.all_reduce(t); },
        {"ranks disagree", "[4] Float", "[3] Float", g.rank_label()}));
  }
  torchtp::set_debug_checks(false);
}

namespace {

// "rank 0 called X; ranks 1, 2, 3 called Y": what the fingerprint check
// says when rank 0 differs from the others.
std::string rank0_versus_rest(
    const torchtp::Group& g,
    const std::string& first,
    const std::string& rest) {
  std::string others = g.size() > 2 ? "ranks 1" : "rank 1";
  for (int r = 2; r < g.size(); ++r) {
    others += ", " + std::to_string(r);
  }
  return "rank 0 called " + first + "; " + others + " called " + rest;
}

} // namespace

TEST(Group, DebugFingerprintsNameWhatEveryRankCalled) {
  auto g = world();
  if (g.size() == 1) {
    return; // one rank cannot disagree
  }
  torchtp::set_debug_checks(true);
  // A group of its own, so its collectives are numbered from #0 here.
  auto s = g.split(0);
  const bool first = s.rank() == 0;
  auto a = torch::ones({4});
  auto b = torch::ones({2, 3});

  // Different collectives: every rank raises, naming each rank's call.
  EXPECT_TRUE(raises_with(
      [&] {
        if (first) {
          s.all_reduce(a);
        } else {
          s.all_gather(a, 0);
        }
      },
      {"ranks disagree on collective #0 of group", "(TORCHTP_DEBUG)",
       rank0_versus_rest(
           s, "#0 all_reduce(sum) of [4] Float",
           "#0 all_gather(dim 0) of [4] Float"),
       s.rank_label()}));

  // The same two collectives in another order: named at the first.
  EXPECT_TRUE(raises_with(
      [&] {
        if (first) {
          s.broadcast(b, 0);
          s.all_reduce(a, torchtp::ReduceOp::max);
        } else {
          s.all_reduce(a, torchtp::ReduceOp::max);
          s.broadcast(b, 0);
        }
      },
      {rank0_versus_rest(
           s, "#1 broadcast(root 0) of [2, 3] Float",
           "#1 all_reduce(max) of [4] Float"),
       s.rank_label()}));

  // A barrier against a collective with a tensor.
  EXPECT_TRUE(raises_with(
      [&] {
        if (first) {
          s.barrier();
        } else {
          s.reduce_scatter(torch::ones({2 * s.size()}), 0);
        }
      },
      {rank0_versus_rest(
           s, "#2 barrier",
           "#2 reduce_scatter(dim 0) of [" + std::to_string(2 * s.size()) +
               "] Float"),
       s.rank_label()}));

  // Same shape, other dim: the communicators cannot see this one (the
  // bytes agree); the fingerprint can. Dim -1 and dim 1 are the same dim.
  EXPECT_TRUE(raises_with(
      [&] { s.all_gather(b, first ? 0 : -1); },
      {rank0_versus_rest(
          s, "#3 all_gather(dim 0) of [2, 3] Float",
          "#3 all_gather(dim 1) of [2, 3] Float")}));
  EXPECT_NO_THROW(s.all_gather(b, first ? 1 : -1));

  // Nothing ran and every rank counted alike: the group is still in step.
  auto v = torch::ones({5});
  s.all_reduce(v);
  EXPECT_TRUE(torch::equal(v, torch::full({5}, double(s.size()))));
  torchtp::set_debug_checks(false);
}

// ---------------------------------------------------------------------------
// Every communicator: CTest runs this file with TORCHTP_BACKEND=shm and
// =gloo (and shm with tiny slots, so that every size is chunked).

namespace {

const std::vector<torch::Dtype> kAllDtypes = {
    torch::kFloat, torch::kDouble, torch::kBFloat16, torch::kHalf,
    torch::kLong,  torch::kInt,    torch::kByte};

// Sizes around the shared-memory thresholds: one element, a prime, past
// the one-shot limit, past a 1 MiB slot, and not multiples of any chunk.
const std::vector<int64_t> kOddSizes = {1, 7, 4099, 70001, 300007};

// Small integers so that every dtype holds the sums exactly.
torch::Tensor pattern(int r, int64_t n, torch::Dtype dt) {
  return ((torch::arange(n, torch::kLong) * 7 + 3 * r) % 13).to(dt);
}

std::string describe(torch::Dtype dt, int64_t n) {
  return std::string(c10::toString(dt)) + " x " + std::to_string(n);
}

} // namespace

TEST(Group, BackendIsTheOneAskedFor) {
  auto g = world();
  const char* asked = std::getenv("TORCHTP_BACKEND");
  if (g.size() == 1) {
    EXPECT_EQ(g.backend(), "self");
  } else if (asked != nullptr && std::string(asked) == "gloo") {
    EXPECT_EQ(g.backend(), "gloo");
  } else if (spans_hosts(g)) {
    EXPECT_EQ(g.backend(), "gloo"); // auto, across hosts
  } else {
    // auto or shm, every rank on this host: shared memory.
    EXPECT_EQ(g.backend(), "shm");
  }
  // Sub-groups are connected the same way.
  auto half = g.split(g.rank() % 2);
  EXPECT_EQ(half.backend(), half.size() == 1 ? "self" : g.backend());
}

TEST(Group, SharedMemoryWithinAHostGlooAcross) {
  auto g = world();
  const char* asked = std::getenv("TORCHTP_BACKEND");
  if (asked != nullptr && *asked != '\0' && std::string(asked) != "auto") {
    GTEST_SKIP() << "TORCHTP_BACKEND=" << asked << " forces one communicator";
  }
  const int local = ranks_per_host(g);
  auto host = g.split(g.rank() / local);   // the ranks of this host
  auto across = g.split(g.rank() % local); // one rank of each host
  auto expected = [](const torchtp::Group& group, bool one_host) {
    return group.size() == 1 ? "self" : one_host ? "shm" : "gloo";
  };
  EXPECT_EQ(g.backend(), expected(g, !spans_hosts(g)));
  EXPECT_EQ(host.backend(), expected(host, true));
  EXPECT_EQ(across.backend(), expected(across, false));
  for (auto* group : {&host, &across}) {
    auto t = torch::full({5}, double(g.rank()));
    group->all_reduce(t);
    auto ranks = group->all_gather(torch::full({1}, double(g.rank())), 0);
    EXPECT_TRUE(torch::equal(t, torch::full({5}, ranks.sum().item<double>())))
        << group->backend();
  }
  if (g.rank() == 0) {
    std::cout << "backends: world " << g.backend() << ", within a host "
              << host.backend() << ", across hosts " << across.backend()
              << std::endl;
  }
}

TEST(Group, EveryCollectiveOfEveryDtypeAndOddSize) {
  auto g = world();
  const int n = g.size();
  for (auto dt : kAllDtypes) {
    for (int64_t len : kOddSizes) {
      SCOPED_TRACE(describe(dt, len));
      auto sum = torch::zeros({len}, torch::kLong);
      auto hi = pattern(0, len, torch::kLong);
      auto lo = hi.clone();
      std::vector<torch::Tensor> parts;
      for (int r = 0; r < n; ++r) {
        auto p = pattern(r, len, torch::kLong);
        sum += p;
        hi = torch::maximum(hi, p);
        lo = torch::minimum(lo, p);
        parts.push_back(p);
      }
      auto t = pattern(g.rank(), len, dt);
      g.all_reduce(t);
      EXPECT_TRUE(torch::equal(t, sum.to(dt))) << "all_reduce sum";
      t = pattern(g.rank(), len, dt);
      g.all_reduce(t, torchtp::ReduceOp::max);
      EXPECT_TRUE(torch::equal(t, hi.to(dt))) << "all_reduce max";
      t = pattern(g.rank(), len, dt);
      g.all_reduce(t, torchtp::ReduceOp::min);
      EXPECT_TRUE(torch::equal(t, lo.to(dt))) << "all_reduce min";

      auto gathered = g.all_gather(pattern(g.rank(), len, dt), 0);
      EXPECT_TRUE(torch::equal(gathered, torch::cat(parts).to(dt)))
          << "all_gather";

      // reduce_scatter of n blocks of `len`: block r of the sum.
      auto blocks = pattern(g.rank(), n * len, dt);
      auto full_sum = torch::zeros({n * len}, torch::kLong);
      for (int r = 0; r < n; ++r) {
        full_sum += pattern(r, n * len, torch::kLong);
      }
      EXPECT_TRUE(torch::equal(
          g.reduce_scatter(blocks, 0),
          full_sum.narrow(0, g.rank() * len, len).to(dt)))
          << "reduce_scatter";

      const int root = n - 1;
      auto b = pattern(g.rank(), len, dt);
      g.broadcast(b, root);
      EXPECT_TRUE(torch::equal(b, pattern(root, len, dt))) << "broadcast";
    }
  }
}

TEST(Group, EmptyTensorsGiveEmptyResults) {
  auto g = world();
  // Every rank passes the same empty shape, so none communicates.
  auto t = torch::ones({0, 3});
  g.all_reduce(t);
  EXPECT_EQ(t.sizes(), torch::IntArrayRef({0, 3}));
  EXPECT_EQ(g.all_gather(t, 1).sizes(), torch::IntArrayRef({0, 3 * g.size()}));
  auto rows = torch::ones({2 * g.size(), 0});
  EXPECT_EQ(g.reduce_scatter(rows, 0).sizes(), torch::IntArrayRef({2, 0}));
  g.broadcast(t, 0);
  // The group is still in step afterwards.
  auto one = torch::ones({3});
  g.all_reduce(one);
  EXPECT_TRUE(torch::equal(one, torch::full({3}, double(g.size()))));
}

TEST(Group, BFloat16SumsInFloat32) {
  auto g = world();
  // 256 + 1 rounds back to 256 in bfloat16, so summing there would lose
  // every 1; in float32 the exact sum is rounded once.
  auto t = torch::full({5}, g.rank() == 0 ? 256.0 : 1.0, torch::kBFloat16);
  g.all_reduce(t);
  auto exact = torch::full({5}, 256.0 + (g.size() - 1), torch::kFloat);
  EXPECT_TRUE(torch::equal(t, exact.to(torch::kBFloat16)))
      << t[0].item<float>();
}

TEST(Group, WithBackendGivesEachCommunicatorTheSameResults) {
  auto g = world();
  for (const std::string b : {"gloo", "shm"}) {
    if (b == "shm" && spans_hosts(g)) {
      EXPECT_TRUE(raises_with(
          [&] { g.with_backend(b); }, {"spans hosts", g.rank_label()}));
      continue;
    }
    auto other = g.with_backend(b);
    EXPECT_EQ(other.size(), g.size());
    EXPECT_EQ(other.rank(), g.rank());
    EXPECT_EQ(other.backend(), g.size() == 1 ? "self" : b);
    auto t = pattern(g.rank(), 70001, torch::kFloat);
    other.all_reduce(t);
    auto expected = torch::zeros({70001}, torch::kFloat);
    for (int r = 0; r < g.size(); ++r) {
      expected += pattern(r, 70001, torch::kFloat);
    }
    EXPECT_TRUE(torch::equal(t, expected)) << b;
  }
  EXPECT_TRUE(raises_with(
      [&] { g.with_backend("nccl"); },
      {"'nccl' is not one of auto, gloo, shm", g.rank_label()}));
}

TEST(Group, ConcurrentAsyncCollectivesOnTwoGroups) {
  auto g = world();
  auto a = g.with_backend(spans_hosts(g) ? "gloo" : "shm");
  auto b = g.split(0); // the job's choice of communicator
  auto x = torch::full({1000}, double(g.rank()));
  auto y = torch::full({300007}, 1.0);
  auto wx = a.all_reduce_async(x);
  auto wy = b.all_reduce_async(y);
  auto wz = a.all_gather_async(torch::full({2}, double(g.rank())), 0);
  // Waited in another order than issued.
  EXPECT_TRUE(torch::equal(wy.wait(), torch::full({300007}, double(g.size()))));
  EXPECT_TRUE(torch::equal(
      wz.wait(), g.all_gather(torch::full({2}, double(g.rank())), 0)));
  const double ranks = g.size() * (g.size() - 1) / 2.0;
  EXPECT_TRUE(torch::equal(wx.wait(), torch::full({1000}, ranks)));
}

TEST(Group, MismatchedCollectivesRaiseOnEveryRank) {
  auto g = world();
  if (g.size() == 1) {
    auto t = torch::ones({4});
    EXPECT_NO_THROW(g.all_reduce(t)); // one rank cannot disagree
    return;
  }
  // The shared-memory communicator compares every collective's signature
  // at no cost; over Gloo the TORCHTP_DEBUG check does it.
  const bool shm = g.backend() == "shm";
  auto s = g.split(0);
  torchtp::set_debug_checks(!shm);
  // Rank 0 passes one element more than the others: every rank raises,
  // naming both sizes.
  auto t = torch::ones({s.rank() == 0 ? 4 : 3});
  if (shm) {
    EXPECT_TRUE(raises_with(
        [&] { s.all_reduce(t); },
        {"ranks called different collectives", "all_reduce of 16 bytes",
         "all_reduce of 12 bytes", s.rank_label()}));
    // A different collective altogether.
    auto u = torch::ones({4});
    EXPECT_TRUE(raises_with(
        [&] {
          if (s.rank() == 0) {
            s.all_gather(u, 0);
          } else {
            s.all_reduce(u);
          }
        },
        {"ranks called different collectives", "all_gather", "all_reduce",
         s.rank_label()}));
  } else {
    EXPECT_TRUE(raises_with(
        [&] { s.all_reduce(t); },
        {"ranks disagree", "[4] Float", "[3] Float", s.rank_label()}));
  }
  torchtp::set_debug_checks(false);
  // Nothing was corrupted and the group is still in step.
  auto v = torch::ones({5});
  s.all_reduce(v);
  EXPECT_TRUE(torch::equal(v, torch::full({5}, double(s.size()))));
}

namespace {
// The uneven rule written out here, independently of Partition: the first
// `full % ws` ranks hold one more index.
std::vector<int64_t> uneven_sizes(int64_t full, int64_t ws) {
  std::vector<int64_t> sizes(ws);
  for (int64_t r = 0; r < ws; ++r) {
    sizes[r] = full / ws + (r < full % ws ? 1 : 0);
  }
  return sizes;
}
} // namespace

TEST(Group, UnevenAllGatherAndReduceScatterAlongAnyDim) {
  auto g = world();
  const int64_t ws = g.size();
  const int64_t full = 2 * ws + 1; // never divides for ws > 1
  const auto sizes = uneven_sizes(full, ws);
  for (auto dt : kDtypes) {
    for (int64_t dim : {0, 1, 2, -1}) {
      SCOPED_TRACE(::testing::Message() << "dim " << dim << " " << dt);
      const int64_t d = dim < 0 ? 3 + dim : dim;
      torchtp::Partition part(full, ws, g.rank(), "test", /*uneven=*/true);
      // all_gather: rank r contributes its own sizes[r] rows.
      std::vector<torch::Tensor> all;
      for (int r = 0; r < ws; ++r) {
        std::vector<int64_t> shape = {2, 3, 4};
        shape[d] = sizes[r];
        all.push_back(contribution(r, shape, dt));
      }
      auto got = g.all_gather(all[g.rank()], dim, part);
      EXPECT_TRUE(all_close(got, torch::cat(all, d)));
      EXPECT_EQ(got.scalar_type(), dt);
      // reduce_scatter: the sum over ranks, this rank's rows of it.
      std::vector<int64_t> shape = {2, 3, 4};
      shape[d] = full;
      auto sum = torch::zeros(shape, torch::kDouble);
      for (int r = 0; r < ws; ++r) {
        sum += contribution(r, shape, torch::kDouble);
      }
      int64_t offset = 0;
      for (int r = 0; r < g.rank(); ++r) {
        offset += sizes[r];
      }
      auto rs = g.reduce_scatter(contribution(g.rank(), shape, dt), dim, part);
      EXPECT_TRUE(
          all_close(rs, sum.narrow(d, offset, sizes[g.rank()]).to(dt)));
      auto mx = g.reduce_scatter(
          contribution(g.rank(), shape, dt), dim, part, torchtp::ReduceOp::max);
      EXPECT_TRUE(all_close(
          mx,
          contribution(ws - 1, shape, torch::kDouble)
              .narrow(d, offset, sizes[g.rank()])
              .to(dt)));
    }
  }
}

TEST(Group, UnevenAsyncAndWrongPartsRaise) {
  auto g = world();
  const int64_t ws = g.size();
  torchtp::Partition part(ws + 1, ws, g.rank(), "test", /*uneven=*/true);
  auto mine = torch::full({part.local_size(), 2}, double(g.rank()));
  auto got = g.all_gather_async(mine, 0, part).wait();
  EXPECT_EQ(got.size(0), ws + 1);
  EXPECT_EQ(got[0][0].item<double>(), 0.0);
  EXPECT_EQ(got[ws][0].item<double>(), double(ws - 1));
  // A tensor that is not this rank's part is refused before any
  // communication, naming both sizes.
  EXPECT_TRUE(raises_with(
      [&] { g.all_gather(torch::zeros({part.local_size() + 1, 2}), 0, part); },
      {"torchtp::Group::all_gather", "expected this rank's part",
       g.rank_label()}));
  EXPECT_TRUE(raises_with(
      [&] { g.reduce_scatter(torch::zeros({ws, 2}), 0, part); },
      {"torchtp::Group::reduce_scatter", "full size", g.rank_label()}));
  if (ws > 1) {
    torchtp::Partition other(ws + 1, ws, (g.rank() + 1) % ws, "test", true);
    EXPECT_TRUE(raises_with(
        [&] { g.all_gather(mine, 0, other); }, {"not of this rank"}));
  }
}

TEST(Group, PartitionOfLearnsEveryRanksPart) {
  auto g = world();
  const int64_t ws = g.size();
  const auto sizes = uneven_sizes(3 * ws + 2, ws);
  auto part = g.partition_of(sizes[g.rank()], "vocabulary");
  EXPECT_EQ(part.full_size(), 3 * ws + 2);
  EXPECT_EQ(part.sizes(), sizes);
  // Even parts come back even.
  EXPECT_TRUE(g.partition_of(4, "x").is_even());
  EXPECT_EQ(g.partition_of(4, "x").full_size(), 4 * ws);
  if (ws > 1) {
    // Rank 0 smaller than the others breaks the rule (the first ranks hold
    // the extra unit): every rank raises, naming every part.
    const int64_t mine = g.rank() == 0 ? 1 : 2;
    EXPECT_TRUE(raises_with(
        [&] { g.partition_of(mine, "vocabulary"); },
        {"vocabulary", "not a torchtp split", g.rank_label()}));
  }
}
