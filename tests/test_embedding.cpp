// VocabParallelEmbedding against F::embedding on the full table, forward and
// backward; every rank compares its own rows of the table gradient.

#include "reference.h"

#include <string>

using torchtp::testing::all_close;
using torchtp::testing::leaf;
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
