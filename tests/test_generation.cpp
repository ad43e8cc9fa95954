// Inference: the key/value cache, batched prompts and generation, at every
// world size, against recomputing the whole sequence and against the model
// built unsharded (on a one-rank group) from the same seed.

#include "test_util.h"

#include <c10/core/InferenceMode.h>

#include <sys/mman.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace {

using torchtp::testing::all_close;
using torchtp::testing::world;

constexpr int64_t kVocab = 37; // padded to 48: 1, 2, 3 and 4 ranks divide it

torchtp::GPT make_gpt(torch::Dtype dtype, const torchtp::Group& g) {
  torch::manual_seed(7);
  return torchtp::GPT(torchtp::GPTOptions(kVocab, 24)
                          .d_model(48)
                          .num_heads(12)
                          .num_layers(2)
                          .vocab_pad_multiple(12)
                          .group(g)
                          .dtype(dtype));
}

torch::Tensor random_ids(int64_t batch, int64_t seq, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(kVocab, {batch, seq}, torch::kLong);
}

// Greedy decoding the slow way: the whole sequence again for every token,
// on the unsharded model.
std::vector<int64_t> greedy_by_recomputing(
    torchtp::GPT& full, std::vector<int64_t> ids, int64_t n) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    auto logits = full->full_logits(torch::tensor(ids).unsqueeze(0));
    const int64_t next = logits[0][-1].argmax().item<int64_t>();
    out.push_back(next);
    ids.push_back(next);
  }
  return out;
}

void expect_cache_matches_recompute(
    torch::Dtype dtype, double rtol, double atol) {
  auto gpt = make_gpt(dtype, world());
  gpt->eval();
  auto ids = random_ids(2, 12, 1);
  c10::InferenceMode inference;
  auto whole = gpt->forward(ids); // [2, 12, V/ws]
  auto cache = gpt->make_cache();
  auto prefill = gpt->forward_cached(ids.narrow(1, 0, 5), cache);
  EXPECT_TRUE(all_close(prefill, whole.narrow(1, 0, 5), {rtol, atol}));
  for (int64_t t = 5; t < 12; ++t) {
    auto step = gpt->forward_cached(ids.narrow(1, t, 1), cache);
    EXPECT_TRUE(all_close(step, whole.narrow(1, t, 1), {rtol, atol}))
        << "position " << t;
  }
  EXPECT_EQ(cache.length(), 12);
}

} // namespace

TEST(GPTCache, DecodingWithTheCacheEqualsRecomputingInFloat64) {
  expect_cache_matches_recompute(torch::kDouble, 1e-10, 1e-10);
}

TEST(GPTCache, DecodingWithTheCacheEqualsRecomputingInFloat32) {
  // Stated bound: 1e-5 relative, 1e-5 absolute (logits are O(1)).
  expect_cache_matches_recompute(torch::kFloat, 1e-5, 1e-5);
}

namespace {
// Of the pages a tensor's bytes span, the fraction resident in memory.
double resident_fraction(const torch::Tensor& t) {
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr()) / page * page;
  const auto end = reinterpret_cast<uintptr_t>(t.data_ptr()) + t.nbytes();
  std::vector<unsigned char> resident((end - begin + page - 1) / page);
  EXPECT_EQ(
      mincore(reinterpret_cast<void*>(begin), end - begin, resident.data()), 0);
  int64_t n = 0;
  for (const auto r : resident) {
    n += r & 1;
  }
  return static_cast<double>(n) / static_cast<double>(resident.size());
}
} // namespace

// A cache is sized for the whole context; only the positions written may
// take memory, even where the allocator holds freed pages still resident
// (a prefill's temporaries of the same size, freed just before: from
// malloc's heap the cache would take those and be resident whole).
TEST(GPTCache, HoldsMemoryOnlyForThePositionsWritten) {
  {
    // With transparent huge pages always on, the kernel may back any
    // touched page of the cache with 2 MiB: nothing to check.
    std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string modes;
    std::getline(thp, modes);
    if (modes.find("[always]") != std::string::npos) {
      GTEST_SKIP() << "transparent huge pages are [always] on this machine";
    }
  }
  torch::manual_seed(7);
  auto gpt = torchtp::GPT(torchtp::GPTOptions(kVocab, 2048)
                              .d_model(192)
                              .num_heads(12)
                              .num_layers(2)
                              .vocab_pad_multiple(12)
                              .group(world())
                              .dtype(torch::kFloat));
  gpt->eval();
  const int64_t batch = 8, heads = 12 / world().size();
  // Each layer's keys: [8, heads, 2048, 16] floats (3-12 MiB a rank).
  const int64_t cache_floats = batch * heads * 2048 * 16;
  // Freed pages of the cache's size, still resident, left two ways (which
  // one a heap reuses depends on its history): tensors freed one after
  // another (the first raises glibc's mmap threshold to their size, so
  // the next come from the heap), or four freed at once below a later
  // allocation that keeps their pages from being trimmed.
  torch::Tensor above;
  const std::vector<std::function<void()>> leave_freed_pages = {
      [&] {
        for (int i = 0; i < 3; ++i) {
          torch::ones({cache_floats});
        }
      },
      [&] {
        std::vector<torch::Tensor> freed;
        for (int i = 0; i < 4; ++i) {
          freed.push_back(torch::ones({cache_floats}));
        }
        above = torch::ones({16 << 10});
      }};
  for (size_t setup = 0; setup < leave_freed_pages.size(); ++setup) {
    SCOPED_TRACE("freed pages left the way " + std::to_string(setup));
    leave_freed_pages[setup]();
    c10::InferenceMode inference;
    auto cache = gpt->make_cache();
    gpt->forward_cached(random_ids(batch, 3, 5), cache);
    for (const auto& layer : cache.layers) {
      ASSERT_EQ(layer.k.numel(), cache_floats);
      // 3 of 2048 positions written: a page of each row's 128 KiB.
      EXPECT_LT(resident_fraction(layer.k), 0.1);
      EXPECT_LT(resident_fraction(layer.v), 0.1);
    }
    // Still the values written: decoding goes on from them.
    EXPECT_TRUE(all_close(
        gpt->forward_cached(torch::zeros({batch, 1}, torch::kLong), cache),
        gpt->forward(torch::cat(
                         {random_ids(batch, 3, 5),
                          torch::zeros({batch, 1}, torch::kLong)},
                         1))
            .narrow(1, 3, 1)));
  }
}

TEST(GPTCache, LeftPaddedPromptsDecodeAsEachAlone) {
  auto gpt = make_gpt(torch::kDouble, world());
  gpt->eval();
  auto a = random_ids(1, 7, 2), b = random_ids(1, 3, 3);
  c10::InferenceMode inference;
  // [pad pad pad pad b b b] next to [a a a a a a a].
  auto ids =
      torch::cat({a, torch::cat({torch::zeros({1, 4}, torch::kLong), b}, 1)});
  auto mask = torch::ones({2, 7}, torch::kBool);
  mask[1].narrow(0, 0, 4).fill_(false);
  auto cache = gpt->make_cache();
  auto both = gpt->forward_cached(ids, cache, mask);
  auto alone_cache = gpt->make_cache();
  auto alone = gpt->forward_cached(b, alone_cache);
  EXPECT_TRUE(all_close(both[0], gpt->forward(a)[0]));
  EXPECT_TRUE(all_close(both[1].narrow(0, 4, 3), alone[0]));
  // Only the last column's logits when asked (the cache filled alike).
  auto last_cache = gpt->make_cache();
  auto last = gpt->forward_cached(ids, last_cache, mask, /*last_only=*/true);
  ASSERT_EQ(last.size(1), 1);
  EXPECT_TRUE(all_close(last, both.narrow(1, 6, 1)));
  EXPECT_EQ(last_cache.length(), 7);
  // And the next token after each.
  auto next = torch::tensor({{5}, {11}}, torch::kLong);
  auto step = gpt->forward_cached(next, cache);
  auto step_b = gpt->forward_cached(next[1].unsqueeze(0), alone_cache);
  EXPECT_TRUE(all_close(step[1], step_b[0]));
  EXPECT_TRUE(all_close(
      step[0], gpt->forward(torch::cat({a, next[0].unsqueeze(0)}, 1))[0].narrow(
                   0, 7, 1)));
}

TEST(Generate, GreedyTokensAreTheUnshardedModelsRecomputed) {
  auto gpt = make_gpt(torch::kDouble, world());
  auto full = make_gpt(torch::kDouble, torchtp::Group::self());
  const std::vector<std::vector<int64_t>> prompts = {
      {3, 1, 4, 1, 5}, {9, 2}, {6, 5, 3, 5, 8, 9, 7, 9}};
  auto gen = torchtp::generate(
      *gpt, prompts, torchtp::GenerateOptions().max_new_tokens(8));
  ASSERT_EQ(gen.tokens.size(), 3u);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(gen.tokens[i], greedy_by_recomputing(full, prompts[i], 8))
        << "prompt " << i << " " << world().rank_label();
    // Alone, the same tokens as in the batch.
    auto alone = torchtp::generate(
        *gpt, {prompts[i]}, torchtp::GenerateOptions().max_new_tokens(8));
    EXPECT_EQ(alone.tokens[0], gen.tokens[i]) << "prompt " << i;
  }
  EXPECT_TRUE(gpt->is_training()); // restored
}

TEST(Generate, SampledTokensAreTheSameAtEveryWorldSize) {
  auto gpt = make_gpt(torch::kDouble, world());
  auto full = make_gpt(torch::kDouble, torchtp::Group::self());
  const std::vector<std::vector<int64_t>> prompts = {{1, 2, 3}, {4}};
  for (auto sampling :
       {torchtp::SamplingOptions().temperature(0.8),
        torchtp::SamplingOptions().top_k(5),
        torchtp::SamplingOptions().top_p(0.9).temperature(1.5)}) {
    auto o = torchtp::GenerateOptions().max_new_tokens(10).seed(42).sampling(
        sampling);
    auto got = torchtp::generate(*gpt, prompts, o);
    auto want = torchtp::generate(*full, prompts, o);
    EXPECT_EQ(got.tokens, want.tokens) << world().rank_label();
  }
}

TEST(Generate, StopsAtEndOfSequenceAndRecordsTheTopLogits) {
  auto gpt = make_gpt(torch::kDouble, world());
  auto full = make_gpt(torch::kDouble, torchtp::Group::self());
  const std::vector<int64_t> prompt = {3, 1, 4};
  auto greedy = greedy_by_recomputing(full, prompt, 6);
  auto o = torchtp::GenerateOptions().max_new_tokens(6).top_logits(5).eos_id(
      greedy[2]);
  auto gen = torchtp::generate(*gpt, {prompt}, o);
  // Ends at the first eos (it may come before the third token).
  auto first_eos = std::find(greedy.begin(), greedy.end(), greedy[2]);
  EXPECT_EQ(gen.tokens[0], std::vector<int64_t>(greedy.begin(), first_eos + 1));
  ASSERT_EQ(gen.top.size(), gen.tokens[0].size());
  // Step 0's five best are those of the unsharded logits.
  torch::NoGradGuard no_grad;
  auto logits = full->full_logits(torch::tensor(prompt).unsqueeze(0))[0][-1];
  auto [values, ids] = logits.topk(5);
  EXPECT_TRUE(torch::equal(gen.top[0].ids[0], ids));
  EXPECT_TRUE(all_close(gen.top[0].values[0], values));
  EXPECT_EQ(gen.top[0].ids[0][0].item<int64_t>(), greedy[0]);
}

TEST(Generate, TooLongOrBadPromptsRaiseBeforeAnyWork) {
  auto gpt = make_gpt(torch::kFloat, world());
  const auto label = world().rank_label();
  // 20 + 4 fills the context of 24 exactly: allowed.
  EXPECT_NO_THROW(torchtp::generate(
      *gpt, {std::vector<int64_t>(20, 1)},
      torchtp::GenerateOptions().max_new_tokens(4)));
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] {
        torchtp::generate(
            *gpt, {std::vector<int64_t>(20, 1)},
            torchtp::GenerateOptions().max_new_tokens(5));
      },
      {"torchtp::generate", "(20 tokens)", "(5)", "24 positions", label}));
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] {
        torchtp::generate(*gpt, {{1}, {}});
      },
      {"prompt 1 is empty", label}));
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] {
        torchtp::generate(*gpt, {{1, kVocab}});
      },
      {"id 37", "[0, 37)", label}));
  c10::InferenceMode inference;
  auto cache = gpt->make_cache();
  gpt->forward_cached(random_ids(1, 20, 4), cache);
  EXPECT_TRUE(torchtp::testing::raises_with(
      [&] { gpt->forward_cached(random_ids(1, 5, 5), cache); },
      {"torchtp::GPT", "20 are used and 5 more", label}));
}
