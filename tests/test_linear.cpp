// ColumnParallelLinear and RowParallelLinear against torch::nn::functional::
// linear with the full weight, forward and backward, for every option
// combination, dtype and number of leading batch dims.

#include "reference.h"

#include <random>

using torchtp::testing::all_close;
using torchtp::testing::full_linear_draw;
using torchtp::testing::init_block_sizes;
using torchtp::testing::InitBlockBytes;
using torchtp::testing::mlp_ref;
using torchtp::testing::next_numbers;
using torchtp::testing::own;
using torchtp::testing::pick_qkv_rows;
using torchtp::testing::raises_with;
using torchtp::testing::tolerance_for;
using torchtp::testing::world;

namespace {

const std::vector<torch::Dtype> kDtypes = {
    torch::kFloat, torch::kDouble, torch::kBFloat16};

// Leading batch dims to test: none, one, two; and one row with one or two
// leading dims (decoding one token at batch 1, which takes gemv).
const std::vector<std::vector<int64_t>> kBatches = {
    {}, {5}, {2, 3}, {1}, {1, 1}};

std::vector<int64_t> with_last(std::vector<int64_t> lead, int64_t last) {
  lead.push_back(last);
  return lead;
}

// The full problem, identical on every rank (same seed): weight, bias,
// input, upstream gradient, and the unsharded results.
struct Reference {
  torch::Tensor w, b, x, grad_y;
  torch::Tensor y, grad_x, grad_w, grad_b;

  Reference(
      int64_t in,
      int64_t out,
      std::vector<int64_t> batch,
      bool bias,
      torch::Dtype dt,
      uint64_t seed) {
    torch::manual_seed(seed);
    w = (torch::randn({out, in}) / std::sqrt(double(in))).to(dt);
    b = bias ? torch::randn({out}).to(dt) : torch::Tensor();
    x = torch::randn(with_last(batch, in)).to(dt);
    grad_y = torch::randn(with_last(batch, out)).to(dt);
    // The reference runs in float64 on the same (rounded) values: an
    // independent, more precise answer.
    // copy=true: for float64 `to` would alias, and mark `x` as requiring grad.
    auto wr = w.to(torch::kDouble, false, true).requires_grad_();
    auto br = bias ? b.to(torch::kDouble, false, true).requires_grad_()
                   : torch::Tensor();
    auto xr = x.to(torch::kDouble, false, true).requires_grad_();
    y = torch::nn::functional::linear(xr, wr, br);
    y.backward(grad_y.to(torch::kDouble));
    y = y.detach();
    grad_x = xr.grad();
    grad_w = wr.grad();
    grad_b = bias ? br.grad() : torch::Tensor();
  }
};

void check_column(
    int64_t in,
    int64_t out,
    std::vector<int64_t> batch,
    bool bias,
    bool gather,
    bool skip,
    torch::Dtype dt,
    uint64_t seed) {
  SCOPED_TRACE(
      ::testing::Message() << "Column in=" << in << " out=" << out
                           << " batch=" << batch.size() << " bias=" << bias
                           << " gather=" << gather << " skip_bias_add=" << skip
                           << " dtype=" << c10::toString(dt));
  Reference ref(in, out, batch, bias, dt, seed);
  torchtp::ColumnParallelLinear layer(
      torchtp::ColumnParallelLinearOptions(in, out)
          .bias(bias)
          .gather_output(gather)
          .skip_bias_add(skip)
          .dtype(dt));
  layer->load_full_weights(ref.w, ref.b);
  auto x = ref.x.clone().requires_grad_();
  auto y = layer->forward(x);
  auto tol = tolerance_for(dt);
  auto expected_y = ref.y;
  auto grad_y = ref.grad_y;
  if (skip && bias) {
    expected_y = expected_y - ref.b.to(torch::kDouble);
  }
  if (!gather) {
    expected_y = own(expected_y, -1);
    grad_y = own(grad_y, -1);
  }
  EXPECT_EQ(y.scalar_type(), dt);
  EXPECT_TRUE(all_close(y, expected_y, tol));
  if (skip && bias && !gather) {
    y = y + layer->bias; // what the caller fuses: its own bias shard
  }
  y.backward(grad_y);
  EXPECT_TRUE(all_close(x.grad(), ref.grad_x, tol)) << "input gradient";
  EXPECT_TRUE(all_close(layer->weight.grad(), own(ref.grad_w, 0), tol))
      << "weight gradient";
  if (bias && skip && gather) {
    EXPECT_FALSE(layer->bias.grad().defined()) << "bias was left out";
  } else if (bias) {
    EXPECT_TRUE(all_close(layer->bias.grad(), own(ref.grad_b, 0), tol))
        << "bias gradient is the rank's slice";
  }
}

void check_row(
    int64_t in,
    int64_t out,
    std::vector<int64_t> batch,
    bool bias,
    bool input_is_parallel,
    bool skip,
    torch::Dtype dt,
    uint64_t seed) {
  SCOPED_TRACE(
      ::testing::Message() << "Row in=" << in << " out=" << out
                           << " batch=" << batch.size() << " bias=" << bias
                           << " input_is_parallel=" << input_is_parallel
                           << " skip_bias_add=" << skip
                           << " dtype=" << c10::toString(dt));
  Reference ref(in, out, batch, bias, dt, seed);
  torchtp::RowParallelLinear layer(torchtp::RowParallelLinearOptions(in, out)
                                       .bias(bias)
                                       .input_is_parallel(input_is_parallel)
                                       .skip_bias_add(skip)
                                       .dtype(dt));
  layer->load_full_weights(ref.w, ref.b);
  auto x =
      (input_is_parallel ? own(ref.x, -1) : ref.x).clone().requires_grad_();
  auto y = layer->forward(x);
  auto tol = tolerance_for(dt);
  auto expected_y = ref.y;
  if (skip && bias) {
    expected_y = expected_y - ref.b.to(torch::kDouble);
  }
  EXPECT_EQ(y.scalar_type(), dt);
  EXPECT_TRUE(all_close(y, expected_y, tol));
  if (skip && bias) {
    y = y + layer->bias; // what the caller fuses
  }
  y.backward(ref.grad_y);
  EXPECT_TRUE(all_close(
      x.grad(), input_is_parallel ? own(ref.grad_x, -1) : ref.grad_x, tol))
      << "input gradient";
  EXPECT_TRUE(all_close(layer->weight.grad(), own(ref.grad_w, 1), tol))
      << "weight gradient";
  if (bias) {
    EXPECT_TRUE(all_close(layer->bias.grad(), ref.grad_b, tol))
        << "bias gradient is the full one, counted once";
  }
}

} // namespace

TEST(ColumnParallelLinear, EveryOptionDtypeAndBatchShapeMatchesUnsharded) {
  const int64_t ws = world().size();
  uint64_t seed = 1;
  for (auto dt : kDtypes) {
    for (const auto& batch : kBatches) {
      for (bool bias : {true, false}) {
        for (bool gather : {false, true}) {
          for (bool skip : {false, true}) {
            check_column(6, 4 * ws, batch, bias, gather, skip, dt, ++seed);
          }
        }
      }
    }
  }
}

TEST(RowParallelLinear, EveryOptionDtypeAndBatchShapeMatchesUnsharded) {
  const int64_t ws = world().size();
  uint64_t seed = 100;
  for (auto dt : kDtypes) {
    for (const auto& batch : kBatches) {
      for (bool bias : {true, false}) {
        for (bool parallel : {true, false}) {
          for (bool skip : {false, true}) {
            check_row(4 * ws, 6, batch, bias, parallel, skip, dt, ++seed);
          }
        }
      }
    }
  }
}

TEST(ParallelLinear, RandomShapesAndOptionsMatchUnsharded) {
  // The same generator state on every rank, so every rank draws the same
  // problems.
  std::mt19937 gen(2024);
  const int64_t ws = world().size();
  auto pick = [&](int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(gen);
  };
  for (int trial = 0; trial < 12; ++trial) {
    const int64_t in = pick(1, 9) * (trial % 2 ? ws : 1);
    const int64_t out = pick(1, 9) * (trial % 2 ? 1 : ws);
    std::vector<int64_t> batch(pick(0, 3));
    for (auto& b : batch) {
      b = pick(1, 4);
    }
    const auto dt = kDtypes[pick(0, 1)];
    if (trial % 2 == 0) {
      check_column(
          in, out, batch, pick(0, 1), pick(0, 1), pick(0, 1), dt, 500 + trial);
    } else {
      check_row(
          in, out, batch, pick(0, 1), pick(0, 1), pick(0, 1), dt, 500 + trial);
    }
  }
}

TEST(ParallelLinear, ColumnThenRowIsTheUnshardedMlp) {
  auto g = world();
  const int64_t d = 8, h = 8 * g.size();
  torch::manual_seed(77);
  auto w1 = torch::randn({h, d}, torch::kDouble) / 3;
  auto b1 = torch::randn({h}, torch::kDouble);
  auto w2 = torch::randn({d, h}, torch::kDouble) / 3;
  auto b2 = torch::randn({d}, torch::kDouble);
  auto x0 = torch::randn({4, 3, d}, torch::kDouble);

  std::vector<torch::Tensor> ref = {w1, b1, w2, b2, x0};
  for (auto& t : ref) {
    t = t.clone().requires_grad_();
  }
  auto yr = mlp_ref(ref[4], ref[0], ref[1], ref[2], ref[3]);
  yr.square().sum().backward();

  torchtp::ColumnParallelLinear fc1(
      torchtp::ColumnParallelLinearOptions(d, h).dtype(torch::kDouble));
  torchtp::RowParallelLinear fc2(
      torchtp::RowParallelLinearOptions(h, d).input_is_parallel(true).dtype(
          torch::kDouble));
  fc1->load_full_weights(w1, b1);
  fc2->load_full_weights(w2, b2);
  auto x = x0.clone().requires_grad_();
  auto y = fc2(torch::gelu(fc1(x)));
  y.square().sum().backward();
  EXPECT_TRUE(all_close(y, yr.detach()));
  EXPECT_TRUE(all_close(x.grad(), ref[4].grad()));
  EXPECT_TRUE(all_close(fc1->weight.grad(), own(ref[0].grad(), 0)));
  EXPECT_TRUE(all_close(fc1->bias.grad(), own(ref[1].grad(), 0)));
  EXPECT_TRUE(all_close(fc2->weight.grad(), own(ref[2].grad(), 1)));
  EXPECT_TRUE(all_close(fc2->bias.grad(), ref[3].grad()));
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

TEST(ParallelLinear, DefaultInitIsTorchNnLinearSlicedForTheSameSeed) {
  auto g = world();
  const int64_t in = 6, out = 4 * g.size();
  torch::manual_seed(31);
  torch::nn::Linear full(in, out);
  torch::manual_seed(31);
  torchtp::ColumnParallelLinear col(in, out);
  EXPECT_TRUE(torch::equal(col->weight, own(full->weight, 0)));
  EXPECT_TRUE(torch::equal(col->bias, own(full->bias, 0)));

  torch::manual_seed(32);
  torch::nn::Linear full2(out, in);
  torch::manual_seed(32);
  torchtp::RowParallelLinear row(out, in);
  EXPECT_TRUE(torch::equal(row->weight, own(full2->weight, 1)));
  EXPECT_TRUE(torch::equal(row->bias, full2->bias));
}

// Each rank draws only its slice, in blocks of rows (here down to one row,
// and blocks that straddle the shards' edges): bit-equal to the slice of the
// full draw, and the generator ends where the full draw leaves it.
TEST(ParallelLinear, InitDrawsTheShardOfTheFullDrawAndAdvancesTheGenerator) {
  auto g = world();
  const int64_t ws = g.size(), r = g.rank();
  for (const auto dtype : kDtypes) {
    for (const int64_t bytes : init_block_sizes()) {
      InitBlockBytes blocks(bytes);
      for (const bool bias : {true, false}) {
        SCOPED_TRACE(
            std::string(c10::toString(dtype)) + ", block " +
            std::to_string(bytes) + " bytes, bias " + std::to_string(bias));
        for (const int64_t segments : {1, 3}) {
          SCOPED_TRACE("segments " + std::to_string(segments));
          const int64_t in = 7, out = segments * 5 * ws;
          torch::manual_seed(61);
          const auto full = full_linear_draw(in, out, bias, dtype);
          const auto next = next_numbers();
          torch::manual_seed(61);
          torchtp::ColumnParallelLinear col(
              torchtp::ColumnParallelLinearOptions(in, out)
                  .bias(bias)
                  .segments(segments)
                  .dtype(dtype));
          const auto after = next_numbers();
          auto rows = [&](const torch::Tensor& t) {
            return segments == 1 ? own(t, 0) : pick_qkv_rows(t, r, ws);
          };
          EXPECT_TRUE(torch::equal(col->weight, rows(full.w)));
          EXPECT_EQ(col->bias.defined(), bias);
          if (bias) {
            EXPECT_TRUE(torch::equal(col->bias, rows(full.b)));
          }
          EXPECT_TRUE(torch::equal(after, next));
        }
        const int64_t in = 5 * ws, out = 9;
        torch::manual_seed(62);
        const auto full = full_linear_draw(in, out, bias, dtype);
        const auto next = next_numbers();
        torch::manual_seed(62);
        torchtp::RowParallelLinear row(
            torchtp::RowParallelLinearOptions(in, out).bias(bias).dtype(dtype));
        const auto after = next_numbers();
        EXPECT_TRUE(torch::equal(row->weight, own(full.w, 1)));
        EXPECT_EQ(row->bias.defined(), bias);
        if (bias) {
          EXPECT_TRUE(torch::equal(row->bias, full.b));
        }
        EXPECT_TRUE(torch::equal(after, next));
      }
    }
  }
}

TEST(ParallelLinear, ResetParametersDrawsAgainFromTheGenerator) {
  auto g = world();
  const int64_t in = 6, out = 4 * g.size();
  torchtp::ColumnParallelLinear col(in, out);
  torch::manual_seed(63);
  const auto full = full_linear_draw(in, out, true, torch::kFloat);
  torch::manual_seed(63);
  col->reset_parameters();
  EXPECT_TRUE(torch::equal(col->weight, own(full.w, 0)));
  EXPECT_TRUE(torch::equal(col->bias, own(full.b, 0)));
}

TEST(ParallelLinear, NonPositiveInitBlockRaises) {
  EXPECT_TRUE(raises_with(
      [] { torchtp::detail::set_init_block_bytes(0); },
      {"set_init_block_bytes", "positive", "got 0"}));
}

TEST(ParallelLinear, ParametersHaveTheShardShapes) {
  auto g = world();
  const int64_t ws = g.size();
  torchtp::ColumnParallelLinear col(8, 4 * ws);
  EXPECT_EQ(col->weight.sizes(), torch::IntArrayRef({4, 8}));
  EXPECT_EQ(col->bias.sizes(), torch::IntArrayRef({4}));
  torchtp::RowParallelLinear row(4 * ws, 8);
  EXPECT_EQ(row->weight.sizes(), torch::IntArrayRef({8, 4}));
  EXPECT_EQ(row->bias.sizes(), torch::IntArrayRef({8}));
  torchtp::ColumnParallelLinear nob(
      torchtp::ColumnParallelLinearOptions(8, 4 * ws).bias(false));
  EXPECT_FALSE(nob->bias.defined());
  EXPECT_EQ(nob->parameters().size(), 1u);
  torchtp::RowParallelLinear skip(
      torchtp::RowParallelLinearOptions(4 * ws, 8).skip_bias_add(true));
  EXPECT_EQ(skip->parameters().size(), 2u)
      << "the skipped bias stays a parameter";
}

TEST(ParallelLinear, PrettyPrintShowsFullAndLocalSizes) {
  auto g = world();
  torchtp::ColumnParallelLinear col(8, 4 * g.size());
  std::ostringstream s;
  s << *col;
  EXPECT_NE(
      s.str().find(
          "out_features=" + std::to_string(4 * g.size()) + " (4 on this rank)"),
      std::string::npos)
      << s.str();
  EXPECT_NE(
      s.str().find("world_size=" + std::to_string(g.size())),
      std::string::npos);
  torchtp::RowParallelLinear row(4 * g.size(), 8);
  std::ostringstream r;
  r << *row;
  EXPECT_NE(
      r.str().find(
          "in_features=" + std::to_string(4 * g.size()) + " (4 on this rank)"),
      std::string::npos)
      << r.str();
}

TEST(ParallelLinear, CloneIsADeepCopyOnTheSameGroup) {
  auto g = world();
  torchtp::ColumnParallelLinear col(4, 2 * g.size());
  auto copy = std::dynamic_pointer_cast<torchtp::ColumnParallelLinearImpl>(
      col->clone());
  ASSERT_TRUE(copy);
  EXPECT_TRUE(torch::equal(copy->weight, col->weight));
  EXPECT_NE(copy->weight.data_ptr(), col->weight.data_ptr());
  auto x = torch::randn({3, 4});
  EXPECT_TRUE(torch::equal(copy->forward(x), col->forward(x)));
}

TEST(ParallelLinearErrors, SizeThatDoesNotDivideNamesRankWorldAndBothSizes) {
  auto g = world();
  const int64_t bad = 4 * g.size() + 1;
  if (g.size() == 1) {
    EXPECT_NO_THROW(torchtp::ColumnParallelLinear(4, bad));
    return;
  }
  EXPECT_TRUE(raises_with(
      [&] { torchtp::ColumnParallelLinear(4, bad); },
      {"ColumnParallelLinear", "out_features (" + std::to_string(bad) + ")",
       "(" + std::to_string(g.size()) + ")", g.rank_label()}));
  EXPECT_TRUE(raises_with(
      [&] { torchtp::RowParallelLinear(bad, 4); },
      {"RowParallelLinear", "in_features (" + std::to_string(bad) + ")",
       "(" + std::to_string(g.size()) + ")", g.rank_label()}));
}

TEST(ParallelLinearErrors, WrongInputWidthNamesBothShapes) {
  auto g = world();
  const int64_t ws = g.size();
  torchtp::ColumnParallelLinear col(8, 2 * ws);
  EXPECT_TRUE(raises_with(
      [&] {
        col(torch::randn({3, 7}));
      },
      {"ColumnParallelLinear", "[*, 8]", "[3, 7]", g.rank_label()}));
  torchtp::RowParallelLinear row(
      torchtp::RowParallelLinearOptions(4 * ws, 8).input_is_parallel(true));
  EXPECT_TRUE(raises_with(
      [&] {
        row(torch::randn({2, 4 * ws + 1}));
      },
      {"RowParallelLinear", "[*, 4]", "[2, " + std::to_string(4 * ws + 1) + "]",
       g.rank_label()}));
  torchtp::RowParallelLinear row_full(
      torchtp::RowParallelLinearOptions(4 * ws, 8).input_is_parallel(false));
  EXPECT_TRUE(raises_with(
      [&] {
        row_full(torch::randn({2, 3}));
      },
      {"RowParallelLinear", "[*, " + std::to_string(4 * ws) + "]", "[2, 3]",
       g.rank_label()}));
  EXPECT_TRUE(raises_with(
      [&] { col(torch::randn({})); },
      {"ColumnParallelLinear", "[]", g.rank_label()}));
}

TEST(ParallelLinearErrors, WrongDtypeNamesBothDtypes) {
  auto g = world();
  torchtp::ColumnParallelLinear col(8, 2 * g.size());
  EXPECT_TRUE(raises_with(
      [&] {
        col(torch::randn({3, 8}, torch::kDouble));
      },
      {"ColumnParallelLinear", "Float", "Double", "[3, 8]", g.rank_label()}));
  torchtp::RowParallelLinear row(
      torchtp::RowParallelLinearOptions(2 * g.size(), 8)
          .dtype(torch::kBFloat16)
          .input_is_parallel(true));
  EXPECT_TRUE(raises_with(
      [&] {
        row(torch::randn({3, 2}));
      },
      {"RowParallelLinear", "BFloat16", "Float", g.rank_label()}));
}

TEST(ParallelLinearErrors, LoadFullWeightsChecksShapes) {
  auto g = world();
  torchtp::ColumnParallelLinear col(8, 2 * g.size());
  EXPECT_TRUE(raises_with(
      [&] {
        col->load_full_weights(torch::randn({3, 8}), torch::randn({3}));
      },
      {"load_full_weights", "[" + std::to_string(2 * g.size()) + ", 8]",
       "[3, 8]", g.rank_label()}));
  EXPECT_TRUE(raises_with(
      [&] {
        col->load_full_weights(torch::randn({2 * g.size(), 8}));
      },
      {"load_full_weights", "bias", "undefined", g.rank_label()}));
  torchtp::RowParallelLinear nob(
      torchtp::RowParallelLinearOptions(2 * g.size(), 8).bias(false));
  EXPECT_TRUE(raises_with(
      [&] {
        nob->load_full_weights(
            torch::randn({8, 2 * g.size()}), torch::randn({8}));
      },
      {"bias(false)", g.rank_label()}));
}
