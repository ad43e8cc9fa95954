// VocabParallelEmbedding against F::embedding on the full table, forward and
// backward; every rank compares its own rows of the table gradient.

#include "reference.h"

#include <string>

using torchtp::testing::all_close;
using torchtp::testing::full_embedding_draw;
using torchtp::testing::init_block_sizes;
using torchtp::testing::InitBlockBytes;
using torchtp::testing::leaf;
using torchtp::testing::next_numbers;
using torchtp::testing::own;
using torchtp::testing::raises_with;
using torchtp::testing::world;

namespace F = torch::nn::functional;

TEST(VocabParallelEmbedding, ForwardAndBackwardMatchFullTable) {
  auto g = world();
  const int64_t v = 4 * g.size(), dim = 5;
  torch::manual_seed(3);
  auto table = torch::randn({v, dim}, torch::kDouble);
  // 7 is prime to every V here, so the 15 ids reach every rank's range,
  // with repeats for V < 15 (their gradients must accumulate).
  auto ids = (torch::arange(15, torch::kLong) * 7 % v).reshape({3, 5});
  for (int64_t r = 0; r < g.size(); ++r) {
    ASSERT_TRUE(((ids >= 4 * r) & (ids < 4 * r + 4)).any().item<bool>());
  }
  auto upstream = torch::randn({3, 5, dim}, torch::kDouble);

  torchtp::VocabParallelEmbedding emb(
      torchtp::VocabParallelEmbeddingOptions(v, dim).dtype(torch::kDouble));
  emb->load_full_weights(table);
  EXPECT_EQ(emb->vocab_start_index(), 4 * g.rank());
  EXPECT_EQ(emb->vocab_end_index(), 4 * g.rank() + 4);
  auto out = emb(ids);
  out.backward(upstream);

  auto full = leaf(table);
  auto expected = F::embedding(ids, full);
  expected.backward(upstream);
  EXPECT_TRUE(all_close(out, expected.detach()));
  EXPECT_TRUE(all_close(emb->weight.grad(), own(full.grad(), 0)));

  // Int ids are accepted too.
  EXPECT_TRUE(all_close(emb(ids.to(torch::kInt)), expected.detach()));
}

TEST(VocabParallelEmbedding, DefaultInitIsTorchNnEmbeddingRows) {
  auto g = world();
  const int64_t v = 4 * g.size(), dim = 6;
  torch::manual_seed(11);
  torch::nn::Embedding full(v, dim);
  torch::manual_seed(11);
  torchtp::VocabParallelEmbedding emb(v, dim);
  EXPECT_TRUE(torch::equal(emb->weight, own(full->weight, 0)));
}

// What the sharded draw of a table rests on, in LibTorch 1.13's CPU
// normal_: a contiguous tensor of 16 elements or more is filled with
// uniforms, turned into normals 16 at a time (Box-Muller), and a size that is
// not a multiple of 16 redraws its last 16. So blocks of a multiple of 16
// elements, the last of 16 or more, give one draw's values and generator
// state; blocks of 8 (the serial path) do not. uniform_ is elementwise: any
// blocks give one draw's values.
TEST(VocabParallelEmbedding, TorchNormalDrawsSixteenAtATime) {
  for (const auto dtype : {torch::kFloat, torch::kDouble}) {
    SCOPED_TRACE(c10::toString(dtype));
    torch::manual_seed(5);
    const auto whole = torch::empty({100}, dtype).normal_();
    const auto next = next_numbers();
    torch::manual_seed(5);
    std::vector<torch::Tensor> blocks;
    for (const int64_t n : {32, 48, 20}) {
      blocks.push_back(torch::empty({n}, dtype).normal_());
    }
    EXPECT_TRUE(torch::equal(torch::cat(blocks), whole));
    EXPECT_TRUE(torch::equal(next_numbers(), next));

    torch::manual_seed(5);
    blocks.clear();
    for (int64_t done = 0; done < 100; done += 8) {
      blocks.push_back(
          torch::empty({std::min<int64_t>(8, 100 - done)}, dtype).normal_());
    }
    EXPECT_FALSE(torch::equal(torch::cat(blocks), whole));

    torch::manual_seed(6);
    const auto uniform = torch::empty({100}, dtype).uniform_(-1, 1);
    torch::manual_seed(6);
    blocks.clear();
    for (const int64_t n : {1, 7, 92}) {
      blocks.push_back(torch::empty({n}, dtype).uniform_(-1, 1));
    }
    EXPECT_TRUE(torch::equal(torch::cat(blocks), uniform));
  }
}

// Each rank draws only its rows, in blocks (down to 16 elements): bit-equal
// to its rows of the full draw, and the generator ends where the full draw
// leaves it. Tables below 16 elements, not a multiple of 16, and whose
// last block would be under 16 elements.
TEST(
    VocabParallelEmbedding,
    InitDrawsTheShardOfTheFullDrawAndAdvancesTheGenerator) {
  auto g = world();
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {1, 3}, {1, 5}, {5, 1}, {4, 6}, {6, 3}, {9, 5}, {13, 16}, {17, 1}};
  for (const auto dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16}) {
    for (const int64_t bytes : init_block_sizes()) {
      InitBlockBytes blocks(bytes);
      for (const auto& [rows_per_rank, dim] : shapes) {
        SCOPED_TRACE(
            std::string(c10::toString(dtype)) + ", block " +
            std::to_string(bytes) + " bytes, " + std::to_string(rows_per_rank) +
            " rows per rank of " + std::to_string(dim));
        const int64_t v = rows_per_rank * g.size();
        torch::manual_seed(71);
        const auto full = full_embedding_draw(v, dim, dtype);
        const auto next = next_numbers();
        torch::manual_seed(71);
        torchtp::VocabParallelEmbedding emb(
            torchtp::VocabParallelEmbeddingOptions(v, dim).dtype(dtype));
        const auto after = next_numbers();
        EXPECT_TRUE(torch::equal(emb->weight, own(full, 0)));
        EXPECT_TRUE(torch::equal(after, next));
      }
    }
  }
}

TEST(VocabParallelEmbedding, OutOfRangeIdRaisesWithRankTag) {
  auto g = world();
  const int64_t v = 4 * g.size();
  torchtp::VocabParallelEmbedding emb(v, 3);
  // Both ends: one id past the table, one negative.
  auto past_end = torch::tensor({int64_t{0}, v}, torch::kLong);
  auto negative = torch::tensor({-1, 0}, torch::kLong);
  EXPECT_TRUE(raises_with(
      [&] { emb(past_end); },
      {"VocabParallelEmbedding", std::to_string(v), g.rank_label()}));
  EXPECT_TRUE(raises_with(
      [&] { emb(negative); }, {"VocabParallelEmbedding", g.rank_label()}));
}
