// The serving engine: paged attention against the padded cache, and
// continuous batching against `generate` serving each request alone, at
// every world size: requests arriving at different steps, greedy and
// sampled, stop ids, the context's end, a full pool, cancellation, and
// every refusal.

#include "test_util.h"

#include <torchtp/engine.h>

#include "detail/paged_attention.h"
#include "detail/weight_kernels.h"

#include <c10/core/InferenceMode.h>

#include <functional>
#include <map>
#include <vector>

namespace {

using torchtp::testing::all_close;
using torchtp::testing::raises_with;
using torchtp::testing::world;

constexpr int64_t kVocab = 37;
constexpr int64_t kContext = 40;

// A GPT-2 layout (learned positions, LayerNorm, tied output) and a Llama
// layout (rotary positions, RMSNorm, grouped-query attention whose two
// key/value heads are replicated at 4 ranks).
enum class Family { gpt2, llama };

torchtp::GPT make_model(Family f, torch::Dtype dtype) {
  torch::manual_seed(11);
  auto o = torchtp::GPTOptions(kVocab, kContext)
               .num_layers(2)
               .vocab_pad_multiple(12)
               .uneven(true)
               .group(world())
               .dtype(dtype);
  if (f == Family::gpt2) {
    o.d_model(48).num_heads(12);
  } else {
    o.d_model(32)
        .num_heads(8)
        .num_kv_heads(2)
        .head_dim(4)
        .ffn_hidden(40)
        .norm(torchtp::NormType::rms_norm)
        .rotary(torchtp::RotaryOptions().theta(500.0))
        .gated_mlp(true)
        .activation(torchtp::Activation::silu)
        .bias(false)
        .tie_embeddings(false);
  }
  return torchtp::GPT(o);
}

std::vector<int64_t> random_prompt(int64_t length, uint64_t seed) {
  torch::manual_seed(seed);
  auto ids = torch::randint(kVocab, {length}, torch::kLong);
  return {ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + length};
}

// Rank 0 runs `drive` (which calls step()); the others follow its steps
// until it shuts the engine down, even when `drive` fails.
void serve(torchtp::Engine& engine, const std::function<void()>& drive) {
  if (world().rank() != 0) {
    engine.follow();
    return;
  }
  try {
    drive();
  } catch (...) {
    engine.shutdown();
    throw;
  }
  engine.shutdown();
}

// What one request got, in order, and how it ended.
struct Outcome {
  std::vector<int64_t> tokens;
  torchtp::FinishReason reason = torchtp::FinishReason::none;
};

// Steps until every request has ended and `last_arrival` has passed (at
// most `max_steps`), recording each request's tokens; `before_step(step)`
// may add or cancel requests.
std::map<int64_t, Outcome> run_to_end(
    torchtp::Engine& engine,
    const std::function<void(int64_t)>& before_step = nullptr,
    int64_t last_arrival = 0,
    int64_t max_steps = 500) {
  std::map<int64_t, Outcome> out;
  for (int64_t step = 0; step < max_steps; ++step) {
    if (before_step) {
      before_step(step);
    }
    for (const auto& u : engine.step()) {
      auto& o = out[u.id];
      EXPECT_EQ(o.reason, torchtp::FinishReason::none)
          << "request " << u.id << " got news after it ended";
      if (u.token >= 0) {
        o.tokens.push_back(u.token);
      }
      o.reason = u.finished;
    }
    const auto s = engine.stats();
    if (step >= last_arrival && s.waiting == 0 && s.running == 0) {
      return out;
    }
  }
  ADD_FAILURE() << "requests still running after " << max_steps << " steps";
  return out;
}

std::vector<int64_t> generate_alone(
    torchtp::GPT& model,
    const std::vector<int64_t>& prompt,
    int64_t n,
    const torchtp::SamplingOptions& sampling,
    uint64_t seed,
    c10::optional<torch::Dtype> kv_dtype = c10::nullopt) {
  return torchtp::generate(
             *model, {prompt},
             torchtp::GenerateOptions()
                 .max_new_tokens(n)
                 .sampling(sampling)
                 .seed(seed)
                 .kv_cache_dtype(kv_dtype))
      .tokens[0];
}

// ---------------------------------------------------------------------------
// forward_paged against forward_cached

void expect_paged_equals_cached(
    Family family,
    torch::Dtype dtype = torch::kDouble,
    c10::optional<torch::Dtype> kv_dtype = c10::nullopt) {
  auto model = make_model(family, dtype);
  model->eval();
  c10::InferenceMode inference;
  // Two sequences in a pool of 10 blocks of 4, their blocks interleaved and
  // out of order: sequence 0 prefills 6 tokens while sequence 1 prefills 3,
  // then they decode one token each for 5 steps.
  auto pool = model->make_kv_blocks(10, 4, kv_dtype);
  const std::vector<std::vector<int64_t>> blocks = {{7, 2, 9}, {0, 5, 3}};
  const auto a = random_prompt(11, 1), b = random_prompt(8, 2);
  const std::vector<std::vector<int64_t>> seqs = {a, b};
  auto tables = torch::tensor({7, 2, 9, 0, 5, 3}, torch::kLong).view({2, 3});
  // The reference: each sequence alone through the padded cache.
  std::vector<torch::Tensor> expected;
  for (const auto& s : seqs) {
    auto cache = model->make_cache(kv_dtype);
    expected.push_back(model->forward_cached(
        torch::tensor(s, torch::kLong).unsqueeze(0), cache)[0]);
  }
  std::vector<int64_t> done = {0, 0};
  const std::vector<int64_t> first = {6, 3};
  for (int step = 0; step < 6; ++step) {
    std::vector<int64_t> ids, pos, seq, slots, rows;
    for (int64_t i = 0; i < 2; ++i) {
      const int64_t n = step == 0 ? first[i] : 1;
      for (int64_t p = done[i]; p < done[i] + n; ++p) {
        ids.push_back(seqs[i][p]);
        pos.push_back(p);
        seq.push_back(i);
        slots.push_back(blocks[i][p / 4] * 4 + p % 4);
      }
      done[i] += n;
      rows.push_back(static_cast<int64_t>(ids.size()) - 1);
    }
    torchtp::PagedBatch batch{
        torch::tensor(ids), torch::tensor(pos), torch::tensor(seq),
        torch::tensor(slots), tables, torch::tensor(rows)};
    auto logits = model->forward_paged(batch, pool);
    ASSERT_EQ(logits.size(0), 2);
    for (int64_t i = 0; i < 2; ++i) {
      // Attention over a bfloat16 pool computes in float32.
      EXPECT_TRUE(all_close(
          logits[i], expected[i][done[i] - 1],
          torchtp::testing::tolerance_for(
              kv_dtype ? torch::kFloat : dtype)))
          << "sequence " << i << " at position " << done[i] - 1;
    }
  }
}

TEST(PagedAttention, EqualsTheCacheOfOneSequenceGPT2) {
  expect_paged_equals_cached(Family::gpt2);
}

TEST(PagedAttention, EqualsTheCacheOfOneSequenceLlama) {
  expect_paged_equals_cached(Family::llama);
}

// A bfloat16 model's pool holds bfloat16, as generate's cache does.
TEST(PagedAttention, EqualsTheCacheOfOneSequenceInBfloat16) {
  auto model = make_model(Family::llama, torch::kBFloat16);
  auto pool = model->make_kv_blocks(2, 4);
  EXPECT_EQ(pool.layers.front().k.scalar_type(), torch::kBFloat16);
  expect_paged_equals_cached(Family::gpt2, torch::kBFloat16);
  expect_paged_equals_cached(Family::llama, torch::kBFloat16);
}

// A bfloat16 pool beside wider weights reads the keys and values as
// generate's bfloat16 cache does. (In float64 a key is the same whichever
// step computed it, so both round it alike; in float32 the last bit may
// differ with the rows in the step and, rarely, flip a rounding.)
TEST(PagedAttention, EqualsTheCacheOfOneSequenceWithABfloat16Pool) {
  auto model = make_model(Family::gpt2, torch::kFloat);
  auto pool = model->make_kv_blocks(2, 4, torch::kBFloat16);
  EXPECT_EQ(pool.layers.front().k.scalar_type(), torch::kBFloat16);
  expect_paged_equals_cached(Family::gpt2, torch::kDouble, torch::kBFloat16);
  expect_paged_equals_cached(Family::llama, torch::kDouble, torch::kBFloat16);
}

// In every instruction set this CPU has: `run(first, count)` (the kernel
// over query rows [first, first + count)) for all `rows` rows is within
// `tolerance` of `expected`, and each row alone gives the same bits.
template <typename Run>
void expect_every_instruction_set(
    const Run& run,
    int64_t rows,
    const torch::Tensor& expected,
    double tolerance,
    const std::string& what) {
  namespace d = torchtp::detail;
  const auto previous = d::kernel_choice();
  for (auto isa : {d::Isa::generic, d::Isa::avx2, d::Isa::avx512}) {
    if (!d::cpu_supports(isa)) {
      continue;
    }
    auto choice = previous;
    choice.isa = isa;
    d::set_kernel_choice(choice);
    auto all = run(0, rows);
    const double error =
        (all.to(torch::kDouble) - expected).abs().max().template item<double>();
    EXPECT_LT(error, tolerance) << d::isa_name(isa) << " " << what;
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_TRUE(run(r, 1)[0].equal(all[r]))
          << d::isa_name(isa) << " " << what << ": row " << r
          << " alone differs";
    }
  }
  d::set_kernel_choice(previous);
}

// The kernel itself in every instruction set this CPU has (the models
// above have heads of 4, below any vector width): heads of 72 (a tail after
// the vectors), grouped heads, blocks out of order, against softmax(q k^T)
// v in float64 from LibTorch; and each row bit-identical alone and among
// the others.
template <typename T>
void expect_kernel_equals_reference(
    torch::Dtype dtype,
    double tolerance,
    int64_t block,
    const std::vector<int64_t>& pos) {
  namespace d = torchtp::detail;
  torch::manual_seed(3);
  const int64_t heads = 4, kv_heads = 2, hd = 72, blocks = 12;
  const std::vector<int64_t> seq = {0, 0, 0, 1, 1, 2};
  auto tables = torch::tensor(
      {11, 3, 7, 0, 0, 2, 9, 0, 1, 5, 4, 8, 6, 10, 0}, torch::kLong)
                    .view({3, 5});
  auto k_pool = torch::randn({blocks * block, kv_heads, hd}, dtype);
  auto v_pool = torch::randn({blocks * block, kv_heads, hd}, dtype);
  const int64_t t = static_cast<int64_t>(seq.size());
  auto q = torch::randn({t, heads, hd}, dtype);
  auto kv_of_head = torch::tensor({0, 0, 1, 1}, torch::kLong);
  auto seq_t = torch::tensor(seq, torch::kLong);
  auto pos_t = torch::tensor(pos, torch::kLong);
  const double scale = 1.0 / std::sqrt(double(hd));
  // The reference: each row's positions gathered, in float64.
  auto expected = torch::empty({t, heads, hd}, torch::kDouble);
  for (int64_t r = 0; r < t; ++r) {
    auto j = torch::arange(pos[r] + 1, torch::kLong);
    auto slots = tables[seq[r]].index_select(0, j.div(block, "floor")) * block +
                 j.remainder(block);
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / 2;
      auto keys = k_pool.index_select(0, slots).select(1, g).to(torch::kDouble);
      auto values =
          v_pool.index_select(0, slots).select(1, g).to(torch::kDouble);
      auto w = torch::softmax(
          keys.matmul(q[r][h].to(torch::kDouble)) * scale, 0);
      expected[r][h] = w.matmul(values);
    }
  }
  auto run = [&](int64_t first, int64_t count) {
    auto out = torch::empty({count, heads, hd}, dtype);
    const d::PagedAttentionShape shape{count, heads, kv_heads, hd, block, 5};
    d::paged_attention<T>(
        q.narrow(0, first, count).contiguous().data_ptr<T>(),
        k_pool.data_ptr<T>(), v_pool.data_ptr<T>(),
        kv_of_head.data_ptr<int64_t>(),
        seq_t.narrow(0, first, count).contiguous().data_ptr<int64_t>(),
        pos_t.narrow(0, first, count).contiguous().data_ptr<int64_t>(),
        tables.data_ptr<int64_t>(), scale, out.data_ptr<T>(), shape);
    return out;
  };
  expect_every_instruction_set(run, t, expected, tolerance, "");
}

TEST(PagedAttention, KernelInEveryInstructionSetEqualsTheReference) {
  // |q k| <= 72 * a few: float32 rounding about 1e-6 of the softmax's
  // inputs, and outputs are averages of values of about 1.
  // Blocks of 4 positions (each a part of a vector pass) and of 24 (a
  // full pass of 16 or three of 8, and a part), rows of up to 101.
  for (const int64_t block : {4, 24}) {
    const std::vector<int64_t> pos = block == 4
        ? std::vector<int64_t>{9, 10, 11, 0, 1, 17}
        : std::vector<int64_t>{57, 58, 59, 0, 1, 100};
    expect_kernel_equals_reference<float>(torch::kFloat, 1e-5, block, pos);
    expect_kernel_equals_reference<double>(
        torch::kDouble, 1e-12, block, pos);
  }
}

// The kernel reading a contiguous cache [batch, kv_heads, capacity, hd]
// (generate's decode steps): each sequence's cache one block, a key mask
// hiding left padding (a row always sees itself), grouped heads, and the
// cache stored as T or as bfloat16 bits beside float queries. Against
// float64 over the stored (widened) values, in every instruction set;
// each row alone equals it among the others.
template <typename T, typename S>
void expect_cache_kernel_equals_reference(
    torch::Dtype query_dtype, torch::Dtype cache_dtype, double tolerance) {
  namespace d = torchtp::detail;
  torch::manual_seed(5);
  // 38 and 39 positions: two full passes of 16 (AVX-512) or four of 8
  // (AVX2) and a tail.
  const int64_t b = 3, heads = 4, kv_heads = 2, hd = 72, capacity = 44;
  const int64_t past = 37, s = 2, total = past + s;
  auto k = torch::randn({b, kv_heads, capacity, hd}).to(cache_dtype);
  auto v = torch::randn({b, kv_heads, capacity, hd}).to(cache_dtype);
  // Sequence 1 is left-padded by 4 (inside the first pass), sequence 2 by
  // 38: its first new token (a padding row) sees only itself.
  auto mask = torch::ones({b, total}, torch::kBool);
  mask[1].narrow(0, 0, 4).fill_(false);
  mask[2].narrow(0, 0, 38).fill_(false);
  auto q = torch::randn({b * s, heads, hd}).to(query_dtype);
  std::vector<int64_t> seq, pos, tables, kv_of_head{0, 0, 1, 1};
  for (int64_t i = 0; i < b; ++i) {
    tables.push_back(i * kv_heads);
    for (int64_t j = 0; j < s; ++j) {
      seq.push_back(i);
      pos.push_back(past + j);
    }
  }
  const double scale = 1.0 / std::sqrt(double(hd));
  auto expected = torch::empty({b * s, heads, hd}, torch::kDouble);
  for (int64_t r = 0; r < b * s; ++r) {
    auto seen = mask[seq[r]].narrow(0, 0, pos[r] + 1).clone();
    seen[pos[r]] = true;
    auto j = seen.nonzero().view({-1});
    for (int64_t h = 0; h < heads; ++h) {
      auto keys = k[seq[r]][h / 2].index_select(0, j).to(torch::kDouble);
      auto values = v[seq[r]][h / 2].index_select(0, j).to(torch::kDouble);
      auto w = torch::softmax(keys.matmul(q[r][h].to(torch::kDouble)) * scale, 0);
      expected[r][h] = w.matmul(values);
    }
  }
  auto run = [&](int64_t first, int64_t count) {
    auto out = torch::empty({count, heads, hd}, query_dtype);
    d::PagedAttentionShape shape{count, heads, kv_heads, hd, capacity, 1};
    shape.slot_stride = hd;
    shape.head_stride = capacity * hd;
    shape.key_mask_columns = total;
    d::paged_attention<T, S>(
        q.narrow(0, first, count).contiguous().template data_ptr<T>(),
        reinterpret_cast<const S*>(k.data_ptr()),
        reinterpret_cast<const S*>(v.data_ptr()), kv_of_head.data(),
        seq.data() + first, pos.data() + first, tables.data(), scale,
        out.template data_ptr<T>(), shape, mask.data_ptr<bool>());
    return out;
  };
  expect_every_instruction_set(
      run, b * s, expected, tolerance, c10::toString(cache_dtype));
}

TEST(PagedAttention, KernelReadsAContiguousCacheWithAKeyMask) {
  // Tolerances as above: the reference sums the same stored values.
  expect_cache_kernel_equals_reference<float, float>(
      torch::kFloat, torch::kFloat, 1e-5);
  expect_cache_kernel_equals_reference<double, double>(
      torch::kDouble, torch::kDouble, 1e-12);
  expect_cache_kernel_equals_reference<float, uint16_t>(
      torch::kFloat, torch::kBFloat16, 1e-5);
}

TEST(PagedAttention, IndicesOutsideThePoolAreRefused) {
  auto model = make_model(Family::gpt2, torch::kDouble);
  c10::InferenceMode inference;
  auto pool = model->make_kv_blocks(2, 4);
  auto one = torch::zeros({1}, torch::kLong);
  torchtp::PagedBatch batch{
      one, one, one, torch::full({1}, 8, torch::kLong),
      torch::zeros({1, 2}, torch::kLong), one};
  EXPECT_TRUE(raises_with(
      [&] { model->forward_paged(batch, pool); },
      {"out of range", "slots below 8", "[rank "}));
  batch.slots = one;
  batch.positions = torch::full({1}, 8, torch::kLong);
  EXPECT_TRUE(raises_with(
      [&] { model->forward_paged(batch, pool); },
      {"out of range", "2 blocks of 4"}));
}

// ---------------------------------------------------------------------------
// Continuous batching

struct Arrival {
  int64_t step;
  int64_t prompt_length;
  int64_t max_tokens;
  torchtp::SamplingOptions sampling;
  uint64_t seed;
};

// Requests arriving at different steps, each compared with `generate`
// serving it alone.
void expect_batched_equals_alone(
    Family family,
    torch::Dtype dtype,
    const std::vector<Arrival>& arrivals,
    const torchtp::EngineOptions& options,
    const std::function<void(torchtp::Engine&)>& after = nullptr) {
  auto model = make_model(family, dtype);
  std::map<int64_t, size_t> arrival_of;
  std::map<int64_t, Outcome> got;
  int64_t last_arrival = 0;
  for (const auto& a : arrivals) {
    last_arrival = std::max(last_arrival, a.step);
  }
  torchtp::Engine engine(*model, options);
  // The pool is what make_kv_blocks gives for the options' dtype.
  EXPECT_EQ(
      engine.stats().kv_cache_bytes,
      model
          ->make_kv_blocks(
              engine.stats().blocks_total, options.block_size(),
              options.kv_cache_dtype())
          .bytes());
  serve(engine, [&] {
    got = run_to_end(engine, [&](int64_t step) {
      for (size_t i = 0; i < arrivals.size(); ++i) {
        const auto& a = arrivals[i];
        if (a.step == step) {
          const auto id = engine.add_request(
              random_prompt(a.prompt_length, 100 + i),
              torchtp::RequestOptions()
                  .sampling(a.sampling)
                  .seed(a.seed)
                  .max_tokens(a.max_tokens));
          arrival_of[id] = i;
        }
      }
    }, last_arrival);
    EXPECT_EQ(engine.stats().blocks_used, 0);
    if (after) {
      after(engine);
    }
  });
  // Every rank computes the references (generate is collective).
  for (size_t i = 0; i < arrivals.size(); ++i) {
    const auto& a = arrivals[i];
    const int64_t n = std::min(a.max_tokens, kContext - a.prompt_length);
    const auto alone = generate_alone(
        model, random_prompt(a.prompt_length, 100 + i), n, a.sampling,
        a.seed, options.kv_cache_dtype());
    if (world().rank() != 0) {
      continue;
    }
    int64_t id = -1;
    for (const auto& [k, v] : arrival_of) {
      id = v == i ? k : id;
    }
    ASSERT_GE(id, 0);
    EXPECT_EQ(got[id].tokens, alone) << "request " << i;
    EXPECT_EQ(got[id].reason, torchtp::FinishReason::length) << "request " << i;
  }
}

std::vector<Arrival> staggered(const torchtp::SamplingOptions& sampling) {
  // Eight requests: some together, some joining a running batch, one
  // reaching the end of the context (36 + 10 > 40).
  return {
      {0, 5, 9, sampling, 1},  {0, 12, 4, sampling, 2},
      {1, 1, 12, sampling, 3}, {3, 36, 10, sampling, 4},
      {3, 7, 6, sampling, 5},  {4, 20, 8, sampling, 6},
      {9, 3, 5, sampling, 7},  {9, 3, 5, sampling, 7}};
}

TEST(Engine, GreedyRequestsJoiningAtAnyStepEqualEachAloneGPT2) {
  expect_batched_equals_alone(
      Family::gpt2, torch::kDouble,
      staggered(torchtp::SamplingOptions().greedy(true)),
      torchtp::EngineOptions().max_batch(4).block_size(4));
}

TEST(Engine, GreedyRequestsJoiningAtAnyStepEqualEachAloneLlama) {
  expect_batched_equals_alone(
      Family::llama, torch::kDouble,
      staggered(torchtp::SamplingOptions().greedy(true)),
      torchtp::EngineOptions().max_batch(8).block_size(8));
}

TEST(Engine, GreedyRequestsInFloat32EqualEachAlone) {
  expect_batched_equals_alone(
      Family::llama, torch::kFloat,
      staggered(torchtp::SamplingOptions().greedy(true)),
      torchtp::EngineOptions().max_batch(8).block_size(16));
}

// A bfloat16 pool beside float32 weights: half the bytes, and each request
// as generate gives it alone with a bfloat16 cache.
TEST(Engine, ABfloat16PoolHoldsHalfTheBytesAndServesAsGenerate) {
  auto model = make_model(Family::llama, torch::kFloat);
  EXPECT_EQ(
      2 * model->make_kv_blocks(5, 16, torch::kBFloat16).bytes(),
      model->make_kv_blocks(5, 16).bytes());
  expect_batched_equals_alone(
      Family::llama, torch::kFloat,
      staggered(torchtp::SamplingOptions().greedy(true)),
      torchtp::EngineOptions().max_batch(8).block_size(16).kv_cache_dtype(
          torch::kBFloat16));
}

TEST(Engine, SampledRequestsDrawFromTheirOwnGenerators) {
  // Temperature, top-k and top-p, each with its own seed; the last two
  // share a seed and a prompt, so they must agree with each other too.
  auto arrivals = staggered(torchtp::SamplingOptions().temperature(0.8));
  arrivals[1].sampling = torchtp::SamplingOptions().temperature(1.3).top_k(5);
  arrivals[2].sampling = torchtp::SamplingOptions().top_p(0.7);
  arrivals[4].sampling =
      torchtp::SamplingOptions().temperature(0.9).top_k(8).top_p(0.9);
  arrivals[5].sampling = torchtp::SamplingOptions().greedy(true);
  expect_batched_equals_alone(
      Family::gpt2, torch::kDouble, arrivals,
      torchtp::EngineOptions().max_batch(3).block_size(4));
}

TEST(Engine, ChunkedPrefillEqualsEachAlone) {
  // Five prompt tokens a step: the prompts of 12, 20 and 36 tokens are
  // prefilled over 3, 4 and 8 steps, chunks of one beside another's.
  expect_batched_equals_alone(
      Family::gpt2, torch::kDouble,
      staggered(torchtp::SamplingOptions().greedy(true)),
      torchtp::EngineOptions().max_batch(4).block_size(4).max_prefill_tokens(
          5));
  auto arrivals = staggered(torchtp::SamplingOptions().temperature(0.8));
  arrivals[2].sampling = torchtp::SamplingOptions().top_p(0.7);
  expect_batched_equals_alone(
      Family::llama, torch::kDouble, arrivals,
      torchtp::EngineOptions().max_batch(8).block_size(8).max_prefill_tokens(
          3));
}

TEST(Engine, ALongPromptIsPrefilledInChunksBesideTheDecodingRequests) {
  auto model = make_model(Family::gpt2, torch::kDouble);
  torchtp::Engine engine(
      *model,
      torchtp::EngineOptions().block_size(4).max_prefill_tokens(5));
  serve(engine, [&] {
    const auto decoding = engine.add_request(
        random_prompt(3, 1), torchtp::RequestOptions().max_tokens(20));
    engine.step(); // its prompt and first token
    const auto long_one = engine.add_request(
        random_prompt(23, 2), torchtp::RequestOptions().max_tokens(2));
    int64_t prompt_tokens = engine.stats().prompt_tokens;
    // 23 tokens, 5 a step: 5 steps before its first token; the decoding
    // request gets a token in every one of them.
    for (int step = 1; step <= 5; ++step) {
      std::map<int64_t, int64_t> tokens;
      for (const auto& u : engine.step()) {
        tokens[u.id] = u.token;
      }
      const auto stats = engine.stats();
      EXPECT_EQ(stats.prompt_tokens - prompt_tokens, step < 5 ? 5 : 3)
          << "step " << step;
      prompt_tokens = stats.prompt_tokens;
      EXPECT_EQ(stats.running, 2) << "step " << step;
      EXPECT_GE(tokens.count(decoding) ? tokens[decoding] : -1, 0)
          << "the decoding request waited at step " << step;
      EXPECT_EQ(tokens.count(long_one), step == 5 ? 1u : 0u)
          << "step " << step;
    }
    run_to_end(engine);
  });
}

TEST(Engine, APoolTooSmallForAllPreemptsAndRecomputes) {
  // 10 blocks of 4 positions; each request ends holding 5 or 6 (prompt 6
  // or 9 + 14 tokens): all four start, then the latest started give their
  // blocks back as the others grow, and recompute them later. Greedy
  // (both layouts) and sampled, each equal to generate alone.
  auto arrivals = [](const torchtp::SamplingOptions& sampling) {
    return std::vector<Arrival>{
        {0, 6, 14, sampling, 1}, {0, 9, 14, sampling, 2},
        {0, 6, 14, sampling, 3}, {1, 9, 14, sampling, 4}};
  };
  const auto options =
      torchtp::EngineOptions().block_size(4).kv_cache_tokens(40).max_batch(4);
  int64_t preemptions = 0;
  auto count = [&](torchtp::Engine& engine) {
    preemptions = engine.stats().preemptions;
  };
  expect_batched_equals_alone(
      Family::gpt2, torch::kDouble,
      arrivals(torchtp::SamplingOptions().greedy(true)), options, count);
  if (world().rank() == 0) {
    EXPECT_GT(preemptions, 0);
  }
  expect_batched_equals_alone(
      Family::llama, torch::kDouble,
      arrivals(torchtp::SamplingOptions().temperature(0.9).top_k(9)),
      torchtp::EngineOptions(options).max_prefill_tokens(5), count);
  if (world().rank() == 0) {
    EXPECT_GT(preemptions, 0);
  }
}

TEST(Engine, StopIdsEndARequestWithTheirToken) {
  auto model = make_model(Family::gpt2, torch::kDouble);
  const auto prompt = random_prompt(6, 5);
  const auto alone = generate_alone(
      model, prompt, 10, torchtp::SamplingOptions().greedy(true), 0);
  // The first step whose token has not come before.
  size_t k = 3;
  while (std::find(alone.begin(), alone.begin() + k, alone[k]) !=
         alone.begin() + k) {
    ++k;
  }
  ASSERT_LT(k, alone.size());
  torchtp::Engine engine(*model, torchtp::EngineOptions().block_size(4));
  std::map<int64_t, Outcome> got;
  serve(engine, [&] {
    engine.add_request(
        prompt, torchtp::RequestOptions().max_tokens(10).stop_ids(
                    {alone[k], kVocab + 5}));
    got = run_to_end(engine);
  });
  if (world().rank() == 0) {
    EXPECT_EQ(
        got[0].tokens, std::vector<int64_t>(alone.begin(), alone.begin() + k + 1));
    EXPECT_EQ(got[0].reason, torchtp::FinishReason::stop);
    EXPECT_EQ(engine.stats().blocks_used, 0);
  }
}

TEST(Engine, AFullPoolQueuesRequestsAndCancellingFreesBlocks) {
  auto model = make_model(Family::llama, torch::kDouble);
  // 5 blocks of 4 positions: a prompt of 10 takes 3, so a second one does
  // not start beside it (the first grows to 5 blocks: 19 positions).
  torchtp::Engine engine(
      *model, torchtp::EngineOptions().block_size(4).kv_cache_tokens(20));
  std::map<int64_t, Outcome> got;
  std::vector<torchtp::EngineStats> seen;
  serve(engine, [&] {
    const auto options = torchtp::RequestOptions().max_tokens(10);
    const auto a = engine.add_request(random_prompt(10, 1), options);
    const auto b = engine.add_request(random_prompt(10, 2), options);
    const auto c = engine.add_request(random_prompt(10, 3), options);
    EXPECT_EQ(engine.stats().waiting, 3);
    got = run_to_end(engine, [&](int64_t step) {
      if (step == 3) {
        engine.cancel(a); // running: its blocks go to b
      }
      if (step == 5) {
        engine.cancel(c); // still waiting behind b
        engine.cancel(12345); // unknown: ignored
      }
      if (step > 0) {
        seen.push_back(engine.stats());
      }
    });
    EXPECT_EQ(got[a].reason, torchtp::FinishReason::cancelled);
    EXPECT_EQ(got[a].tokens.size(), 3u);
    EXPECT_EQ(got[b].reason, torchtp::FinishReason::length);
    EXPECT_EQ(got[b].tokens.size(), 10u);
    EXPECT_EQ(got[c].reason, torchtp::FinishReason::cancelled);
    EXPECT_TRUE(got[c].tokens.empty());
  });
  if (world().rank() == 0) {
    ASSERT_GE(seen.size(), 3u);
    EXPECT_EQ(seen[0].running, 1);
    EXPECT_EQ(seen[0].waiting, 2);
    EXPECT_EQ(seen[0].blocks_used, 3);
    EXPECT_EQ(seen[0].blocks_total, 5);
    EXPECT_EQ(engine.stats().preemptions, 0);
    const auto end = engine.stats();
    EXPECT_EQ(end.blocks_used, 0);
    EXPECT_EQ(end.running, 0);
    EXPECT_EQ(end.generated_tokens, 13);
  }
}

TEST(Engine, BadRequestsAreRefusedAndNothingIsQueued) {
  auto model = make_model(Family::gpt2, torch::kDouble);
  torchtp::Engine engine(
      *model,
      torchtp::EngineOptions().block_size(4).kv_cache_tokens(16).max_queue(1));
  serve(engine, [&] {
    const auto ok = torchtp::RequestOptions().max_tokens(2);
    EXPECT_TRUE(raises_with(
        [&] { engine.add_request({}, ok); }, {"prompt is empty", "[rank 0/"}));
    EXPECT_TRUE(raises_with(
        [&] { engine.add_request({1, kVocab}, ok); },
        {"holds id 37", "[0, 37)"}));
    EXPECT_TRUE(raises_with(
        [&] { engine.add_request(random_prompt(kContext, 1), ok); },
        {"40 tokens", "context holds 40"}));
    EXPECT_TRUE(raises_with(
        [&] {
          engine.add_request({1}, torchtp::RequestOptions().max_tokens(0));
        },
        {"max_tokens must be positive"}));
    EXPECT_TRUE(raises_with(
        [&] {
          engine.add_request(
              {1}, torchtp::RequestOptions().sampling(
                       torchtp::SamplingOptions().temperature(0)));
        },
        {"temperature > 0"}));
    EXPECT_TRUE(raises_with(
        [&] {
          engine.add_request(
              random_prompt(10, 1), torchtp::RequestOptions().max_tokens(10));
        },
        {"needs 5 key/value blocks", "pool has 4"}));
    EXPECT_TRUE(raises_with([&] { engine.follow(); }, {"other than 0"}));
    EXPECT_EQ(engine.stats().waiting, 0);
    engine.add_request({1, 2}, ok);
    EXPECT_TRUE(raises_with(
        [&] { engine.add_request({1, 2}, ok); },
        {"queue is full", "max_queue 1"}));
    auto got = run_to_end(engine);
    EXPECT_EQ(got.size(), 1u);
  });
  if (world().rank() != 0) {
    EXPECT_TRUE(raises_with(
        [&] { engine.add_request({1}); }, {"add_request is rank 0's"}));
  }
}

TEST(Engine, OptionsThatDifferBetweenRanksAreRefused) {
  auto model = make_model(Family::gpt2, torch::kDouble);
  EXPECT_TRUE(raises_with(
      [&] {
        torchtp::Engine(*model, torchtp::EngineOptions().block_size(0));
      },
      {"block_size 0"}));
  if (world().size() == 1) {
    return;
  }
  const auto make = [&] {
    torchtp::Engine(
        *model, torchtp::EngineOptions().max_batch(4 + world().rank()));
  };
  if (world().rank() == 0) {
    make(); // rank 0's options are the reference
  } else {
    EXPECT_TRUE(raises_with(make, {"same options", "rank 0 has"}));
  }
}

} // namespace
