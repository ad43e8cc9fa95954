// Data x tensor parallel: average_gradients over the data groups against
// the unsharded full batch, and clip_grad_norm against
// torch::nn::utils::clip_grad_norm_ on the unsharded model.

#include "reference.h"

using torchtp::testing::all_close;
using torchtp::testing::expect_grads_match;
using torchtp::testing::small_gpt;
using torchtp::testing::world;

TEST(DataTensorParallel, AveragedGradientsEqualUnshardedFullBatch) {
  // 2 x 2 at four ranks; elsewhere all tensor parallel (one replica), so
  // the test still checks the sharded gradients.
  auto g = world();
  const int tp = g.size() == 4 ? 2 : g.size();
  auto pg = torchtp::make_parallel_groups(g, tp);
  const int dp = g.size() / tp;
  ASSERT_EQ(pg.tensor.size(), tp);
  ASSERT_EQ(pg.data.size(), dp);
  EXPECT_EQ(pg.tensor.rank(), g.rank() % tp);
  EXPECT_EQ(pg.data.rank(), g.rank() / tp);

  torch::manual_seed(7);
  torchtp::GPT gpt(small_gpt().group(pg.tensor));
  torch::manual_seed(7);
  torchtp::GPT full(small_gpt().group(torchtp::Group::self()));

  torch::manual_seed(8);
  auto ids = torch::randint(0, 13, {4, 8}, torch::kLong);
  auto targets = torch::randint(0, 13, {4, 8}, torch::kLong);
  // Every replica sees the same number of tokens (none ignored), so the
  // mean of the replica means is the mean over the whole batch.
  const int64_t rows = 4 / dp, first = pg.data.rank() * rows;
  auto loss =
      gpt->loss(ids.narrow(0, first, rows), targets.narrow(0, first, rows));
  loss.backward();
  torchtp::average_gradients(*gpt, pg.data);

  auto full_loss = full->loss(ids, targets);
  full_loss.backward();

  auto mean_loss = loss.detach().clone();
  pg.data.all_reduce(mean_loss);
  mean_loss /= dp;
  EXPECT_TRUE(all_close(mean_loss, full_loss.detach()));
  expect_grads_match(*gpt, *full, pg.tensor);
}

TEST(ClipGradNorm, IsTheNormOfTheFullGradientAndScalesLikeTorch) {
  auto g = world();
  torch::manual_seed(42);
  torchtp::GPT gpt(small_gpt());
  torch::manual_seed(42);
  torchtp::GPT full(small_gpt().group(torchtp::Group::self()));
  torch::manual_seed(44);
  auto ids = torch::randint(0, 13, {2, 8}, torch::kLong);
  auto targets = torch::randint(0, 13, {2, 8}, torch::kLong);
  gpt->loss(ids, targets).backward();
  full->loss(ids, targets).backward();
  // A max norm far below the gradient's: every gradient is scaled.
  const double norm = torchtp::clip_grad_norm(*gpt, 0.05);
  const double full_norm =
      torch::nn::utils::clip_grad_norm_(full->parameters(), 0.05);
  EXPECT_GT(full_norm, 0.05);
  EXPECT_NEAR(norm, full_norm, 1e-10 * full_norm);
  expect_grads_match(*gpt, *full, g);
  // Below the max norm nothing changes.
  auto before = gpt->lm_head->weight.grad().clone();
  EXPECT_NEAR(torchtp::clip_grad_norm(*gpt, 1e6), 0.05, 1e-6);
  EXPECT_TRUE(torch::equal(gpt->lm_head->weight.grad(), before));
}
