#include "torchtp/generation.h"

#include "detail/check.h"
#include "detail/eval_guard.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>

namespace torchtp {
namespace {

constexpr const char* kGenerate = "torchtp::generate";

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

} // namespace

Generation generate(
    CausalLM& model,
    const std::vector<std::vector<int64_t>>& prompts,
    const GenerateOptions& o,
    const std::function<void(int64_t, const at::Tensor&)>& on_token) {
  const Group& g = model.group();
  const int64_t batch = static_cast<int64_t>(prompts.size());
  TORCHTP_CHECK(batch > 0, kGenerate, g, "no prompts");
  int64_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    TORCHTP_CHECK(!prompts[i].empty(), kGenerate, g, "prompt ", i, " is empty");
    for (int64_t id : prompts[i]) {
      TORCHTP_CHECK(
          id >= 0 && id < model.vocab_size(), kGenerate, g, "prompt ",
          i, " holds id ", id, ", outside the vocabulary [0, ",
          model.vocab_size(), ")");
    }
    longest = std::max<int64_t>(longest, prompts[i].size());
  }
  TORCHTP_CHECK(
      o.max_new_tokens() >= 1, kGenerate, g,
      "max_new_tokens must be positive, got ", o.max_new_tokens());
  TORCHTP_CHECK(
      longest + o.max_new_tokens() <= model.max_seq_len(), kGenerate, g,
      "the longest prompt (", longest, " tokens) plus max_new_tokens (",
      o.max_new_tokens(), ") exceeds the model's context of ",
      model.max_seq_len(), " positions");
  TORCHTP_CHECK(
      o.top_logits() >= 0, kGenerate, g, "top_logits must not be negative");

  c10::InferenceMode inference;
  detail::EvalGuard eval(model.module());
  auto sampling = o.sampling();
  sampling.vocab_size(model.vocab_size())
      .group(g)
      .vocab_partition(model.vocab_partition());
  auto generator = at::detail::createCPUGenerator(o.seed());

  // Left padding: every prompt's last token is in the last column.
  auto ids = torch::zeros({batch, longest}, torch::kLong);
  auto mask = torch::zeros({batch, longest}, torch::kBool);
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t n = prompts[i].size();
    ids[i].narrow(0, longest - n, n).copy_(torch::tensor(prompts[i]));
    mask[i].narrow(0, longest - n, n).fill_(true);
  }

  Generation out;
  out.tokens.resize(batch);
  std::vector<bool> done(batch, false);
  LMCache cache = model.make_cache(o.kv_cache_dtype());
  auto start = std::chrono::steady_clock::now();
  // Only the last column's logits: the output layer on one row per prompt.
  auto logits =
      model.forward_cached(ids, cache, mask, /*last_only=*/true).select(1, 0);
  for (int64_t step = 0; step < o.max_new_tokens(); ++step) {
    if (o.top_logits() > 0) {
      out.top.push_back(vocab_parallel_topk(
          logits, o.top_logits(), model.vocab_size(), g,
          model.vocab_partition()));
    }
    auto next = sample_next_token(logits, generator, sampling);
    bool all_done = true;
    for (int64_t i = 0; i < batch; ++i) {
      if (!done[i]) {
        const int64_t id = next[i].item<int64_t>();
        out.tokens[i].push_back(id);
        done[i] = id == o.eos_id();
      }
      all_done = all_done && done[i];
    }
    if (on_token) {
      on_token(step, next);
    }
    (step == 0 ? out.prefill_seconds : out.step_seconds.emplace_back()) =
        seconds_since(start);
    start = std::chrono::steady_clock::now();
    if (all_done || step + 1 == o.max_new_tokens()) {
      break;
    }
    logits = model.forward_cached(next.unsqueeze(1), cache).select(1, 0);
  }
  return out;
}

} // namespace torchtp
