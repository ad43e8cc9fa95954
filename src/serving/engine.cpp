#include "torchtp/engine.h"

#include "detail/check.h"
#include "detail/eval_guard.h"
#include "detail/products.h"
#include "serving/step_plan.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <unordered_map>

namespace torchtp {
namespace detail {

// A request as rank 0 holds it.
struct EngineRequest {
  int64_t id = -1;
  // The prompt, then every token generated: position j's token.
  std::vector<int64_t> ids;
  int64_t prompt = 0;
  RequestOptions options;
  // max_tokens, cut to what the context leaves.
  int64_t max_tokens = 0;
  // Blocks for the positions cached so far, taken as they fill.
  std::vector<int64_t> blocks;
  // Positions in the cache: every id but the last once decoding. More
  // than one id beyond it: a prompt (or, after a preemption, the prompt
  // and the tokens generated) still to prefill, a chunk a step.
  int64_t cached = 0;
  // Times its blocks were taken for others; it then recomputes them.
  int64_t preemptions = 0;

  int64_t generated() const {
    return static_cast<int64_t>(ids.size()) - prompt;
  }
};

using EngineRequestPtr = std::unique_ptr<EngineRequest>;

} // namespace detail

namespace {

constexpr const char* kEngine = "torchtp::Engine";

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

} // namespace

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::none:
      return "none";
    case FinishReason::stop:
      return "stop";
    case FinishReason::length:
      return "length";
    case FinishReason::cancelled:
      return "cancelled";
  }
  return "unknown";
}

struct Engine::State {
  using Request = detail::EngineRequest;
  using RequestPtr = detail::EngineRequestPtr;

  State(CausalLM& model, const EngineOptions& options)
      : model(model), options(options), group(model.group()) {}

  CausalLM& model;
  EngineOptions options;
  Group group;
  KVBlocks cache;

  // Rank 0: what other threads hand in, under `mutex`.
  mutable std::mutex mutex;
  std::condition_variable work;
  std::deque<RequestPtr> waiting;
  std::vector<int64_t> cancels;
  int64_t next_id = 0;
  EngineStats stats;
  bool shut = false;

  // Rank 0, the stepping thread only.
  std::vector<RequestPtr> running;
  std::vector<int64_t> free_blocks;

  // Every rank: the generators of the sampled requests in the last step.
  std::unordered_map<int64_t, at::Generator> generators;

  int64_t blocks_needed(int64_t prompt, int64_t max_tokens) const {
    // The last token generated is never fed back, so never cached.
    return ceil_div(prompt + max_tokens - 1, cache.block_size);
  }

  // Requests that ended since the last step that ran: every rank drops
  // their generators then.
  std::vector<int64_t> ended;

  void check_rank0(const char* what) const {
    TORCHTP_CHECK(
        group.rank() == 0, kEngine, group, what,
        " is rank 0's (the other ranks call follow())");
  }

  // What one step runs of running[index]: `tokens` new tokens, and
  // whether the last one's logits pick the request's next token (not
  // while a chunk of its prompt is still to come).
  struct Scheduled {
    size_t index;
    int64_t tokens;
    bool samples;
  };

  std::vector<RequestUpdate> take_cancels_and_admit();
  detail::StepPlan plan(std::vector<Scheduled>& scheduled);
  at::Tensor run(const detail::StepPlan& plan);
  void free(Request& r) {
    free_blocks.insert(free_blocks.end(), r.blocks.begin(), r.blocks.end());
    r.blocks.clear();
  }
  // Takes the last running request's blocks (the latest admitted, as
  // vLLM does) and queues it first again: it recomputes its cache later.
  void preempt_last() {
    auto& r = *running.back();
    free(r);
    r.cached = 0;
    ++r.preemptions;
    std::lock_guard<std::mutex> lock(mutex);
    waiting.push_front(std::move(running.back()));
    running.pop_back();
    stats.waiting = static_cast<int64_t>(waiting.size());
    ++stats.preemptions;
  }
};

Engine::Engine(CausalLM& model, const EngineOptions& options)
    : state_(std::make_unique<State>(model, options)) {
  auto& s = *state_;
  const auto& g = s.group;
  TORCHTP_CHECK(
      options.max_batch() > 0 && options.block_size() > 0 &&
          options.kv_cache_tokens() >= 0 && options.max_queue() > 0 &&
          options.max_prefill_tokens() > 0,
      kEngine, g,
      "max_batch, block_size, max_queue and max_prefill_tokens must be "
      "positive, kv_cache_tokens not negative; got max_batch ",
      options.max_batch(), ", block_size ", options.block_size(),
      ", kv_cache_tokens ", options.kv_cache_tokens(), ", max_queue ",
      options.max_queue(), ", max_prefill_tokens ",
      options.max_prefill_tokens());
  // Every rank must lay its pool out as rank 0 does.
  auto mine = torch::tensor(
      {options.max_batch(), options.block_size(), options.kv_cache_tokens(),
       options.max_queue(), options.max_prefill_tokens(),
       int64_t{options.batch_invariant()},
       options.kv_cache_dtype()
           ? static_cast<int64_t>(*options.kv_cache_dtype())
           : int64_t{-1}},
      torch::kLong);
  auto root = mine.clone();
  g.broadcast(root, 0);
  TORCHTP_CHECK(
      root.equal(mine), kEngine, g,
      "every rank must make the engine with the same options; rank 0 has "
      "(max_batch, block_size, kv_cache_tokens, max_queue, "
      "max_prefill_tokens, batch_invariant, kv_cache_dtype) = ",
      root, ", this rank ", mine);
  const int64_t tokens = options.kv_cache_tokens() > 0
                             ? options.kv_cache_tokens()
                             : options.max_batch() * model.max_seq_len();
  s.cache = model.make_kv_blocks(
      ceil_div(tokens, options.block_size()), options.block_size(),
      options.kv_cache_dtype());
  s.stats.blocks_total = s.cache.num_blocks;
  s.stats.kv_cache_bytes = s.cache.bytes();
  // Lowest blocks first.
  for (int64_t b = s.cache.num_blocks - 1; b >= 0; --b) {
    s.free_blocks.push_back(b);
  }
}

Engine::~Engine() = default;

const EngineOptions& Engine::options() const {
  return state_->options;
}

int64_t Engine::add_request(
    const std::vector<int64_t>& prompt, const RequestOptions& o) {
  auto& s = *state_;
  const auto& g = s.group;
  s.check_rank0("add_request");
  const int64_t p = static_cast<int64_t>(prompt.size());
  const int64_t context = s.model.max_seq_len();
  TORCHTP_CHECK(p > 0, kEngine, g, "the prompt is empty");
  for (int64_t id : prompt) {
    TORCHTP_CHECK(
        id >= 0 && id < s.model.vocab_size(), kEngine, g, "the prompt holds id ",
        id, ", outside the vocabulary [0, ", s.model.vocab_size(), ")");
  }
  TORCHTP_CHECK(
      p < context, kEngine, g, "the prompt has ", p,
      " tokens; the context holds ", context, ", so none is left to generate");
  TORCHTP_CHECK(
      o.max_tokens() > 0, kEngine, g, "max_tokens must be positive, got ",
      o.max_tokens());
  const auto& sampling = o.sampling();
  TORCHTP_CHECK(
      sampling.greedy() || (sampling.temperature() > 0 &&
                            sampling.top_k() >= 0 && sampling.top_p() > 0 &&
                            sampling.top_p() <= 1),
      kEngine, g,
      "sampling needs temperature > 0, top_k >= 0 and top_p in (0, 1]; got "
      "temperature ",
      sampling.temperature(), ", top_k ", sampling.top_k(), ", top_p ",
      sampling.top_p());
  auto r = std::make_unique<detail::EngineRequest>();
  r->ids = prompt;
  r->prompt = p;
  r->options = o;
  r->max_tokens = std::min(o.max_tokens(), context - p);
  const int64_t blocks = s.blocks_needed(p, r->max_tokens);
  TORCHTP_CHECK(
      blocks <= s.cache.num_blocks, kEngine, g, "the request needs ", blocks,
      " key/value blocks of ", s.cache.block_size, " positions (", p,
      " prompt tokens and ", r->max_tokens,
      " to generate); the whole pool has ", s.cache.num_blocks);
  std::lock_guard<std::mutex> lock(s.mutex);
  TORCHTP_CHECK(!s.shut, kEngine, g, "the engine was shut down");
  TORCHTP_CHECK(
      static_cast<int64_t>(s.waiting.size()) < s.options.max_queue(), kEngine,
      g, "the queue is full: ", s.waiting.size(), " requests wait (max_queue ",
      s.options.max_queue(), ")");
  r->id = s.next_id++;
  const int64_t id = r->id;
  s.waiting.push_back(std::move(r));
  s.stats.waiting = static_cast<int64_t>(s.waiting.size());
  s.work.notify_all();
  return id;
}

void Engine::cancel(int64_t id) {
  auto& s = *state_;
  s.check_rank0("cancel");
  std::lock_guard<std::mutex> lock(s.mutex);
  s.cancels.push_back(id);
  s.work.notify_all();
}

bool Engine::wait_for_work(std::chrono::milliseconds timeout) {
  auto& s = *state_;
  s.check_rank0("wait_for_work");
  std::unique_lock<std::mutex> lock(s.mutex);
  auto busy = [&] {
    return !s.waiting.empty() || !s.cancels.empty() || s.stats.running > 0;
  };
  s.work.wait_for(lock, timeout, busy);
  return busy();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->stats;
}

std::vector<RequestUpdate> Engine::State::take_cancels_and_admit() {
  std::vector<RequestUpdate> updates;
  std::lock_guard<std::mutex> lock(mutex);
  for (int64_t id : cancels) {
    auto match = [id](const RequestPtr& r) { return r->id == id; };
    auto w = std::find_if(waiting.begin(), waiting.end(), match);
    if (w != waiting.end()) {
      waiting.erase(w);
      updates.push_back({id, -1, FinishReason::cancelled});
      ended.push_back(id);
      continue;
    }
    auto r = std::find_if(running.begin(), running.end(), match);
    if (r != running.end()) {
      free(**r);
      running.erase(r);
      updates.push_back({id, -1, FinishReason::cancelled});
      ended.push_back(id);
    }
  }
  cancels.clear();
  // In order of arrival (a preempted request first): one starts when the
  // free blocks hold everything it has to prefill, beside those started
  // before it in this step; the first that does not fit waits, and so do
  // all behind it. Blocks are taken as positions fill (plan()).
  int64_t promised = 0;
  while (!waiting.empty() &&
         static_cast<int64_t>(running.size()) < options.max_batch()) {
    const auto& r = *waiting.front();
    const int64_t need =
        ceil_div(static_cast<int64_t>(r.ids.size()), cache.block_size);
    if (promised + need > static_cast<int64_t>(free_blocks.size())) {
      break;
    }
    promised += need;
    running.push_back(std::move(waiting.front()));
    waiting.pop_front();
  }
  stats.waiting = static_cast<int64_t>(waiting.size());
  return updates;
}

detail::StepPlan Engine::State::plan(std::vector<Scheduled>& scheduled) {
  detail::StepPlan plan;
  std::vector<int64_t> ids, positions, token_seq, slots, logits_rows;
  int64_t max_blocks = 0;
  // Every decoding request brings its last token; the prefilling ones, in
  // order of arrival, chunks of their prompts while max_prefill_tokens
  // lasts (chunked prefill): a long prompt never stalls the others' next
  // tokens for more than one step's worth of prompt. Blocks are taken as
  // positions need them; when none is free the latest admitted request
  // gives its blocks back (preempt_last), possibly this one.
  int64_t budget = options.max_prefill_tokens();
  for (size_t i = 0; i < running.size(); ++i) {
    Request& r = *running[i];
    const int64_t remaining = static_cast<int64_t>(r.ids.size()) - r.cached;
    const int64_t count = remaining > 1 ? std::min(remaining, budget) : 1;
    if (count == 0) {
      continue;
    }
    const int64_t need = ceil_div(r.cached + count, cache.block_size) -
                         static_cast<int64_t>(r.blocks.size());
    while (need > static_cast<int64_t>(free_blocks.size()) &&
           running.back().get() != &r) {
      preempt_last();
    }
    if (need > static_cast<int64_t>(free_blocks.size())) {
      preempt_last(); // r itself, the last
      break;
    }
    for (int64_t b = 0; b < need; ++b) {
      r.blocks.push_back(free_blocks.back());
      free_blocks.pop_back();
    }
    if (remaining > 1) {
      budget -= count;
    }
    const int64_t seq = static_cast<int64_t>(plan.sequences.size());
    for (int64_t position = r.cached; position < r.cached + count;
         ++position) {
      ids.push_back(r.ids[position]);
      positions.push_back(position);
      token_seq.push_back(seq);
      slots.push_back(
          r.blocks[position / cache.block_size] * cache.block_size +
          position % cache.block_size);
    }
    const bool samples = count == remaining;
    logits_rows.push_back(static_cast<int64_t>(ids.size()) - 1);
    max_blocks = std::max<int64_t>(max_blocks, r.blocks.size());
    const auto& o = r.options.sampling();
    plan.sequences.push_back(
        {r.id, r.cached == 0 && r.preemptions == 0, r.options.seed(),
         o.greedy(), o.temperature(), o.top_k(), o.top_p(), samples});
    scheduled.push_back({i, count, samples});
  }
  const int64_t n = static_cast<int64_t>(scheduled.size());
  if (n == 0) {
    return plan;
  }
  plan.kind = detail::StepPlan::Kind::run;
  plan.ended = std::move(ended);
  ended.clear();
  auto tables = torch::zeros({n, max_blocks}, torch::kLong);
  for (int64_t i = 0; i < n; ++i) {
    const auto& blocks = running[scheduled[i].index]->blocks;
    tables[i]
        .narrow(0, 0, static_cast<int64_t>(blocks.size()))
        .copy_(torch::tensor(blocks, torch::kLong));
  }
  auto& b = plan.batch;
  b.ids = torch::tensor(ids, torch::kLong);
  b.positions = torch::tensor(positions, torch::kLong);
  b.token_seq = torch::tensor(token_seq, torch::kLong);
  b.slots = torch::tensor(slots, torch::kLong);
  b.block_tables = tables;
  b.logits_rows = torch::tensor(logits_rows, torch::kLong);
  return plan;
}

at::Tensor Engine::State::run(const detail::StepPlan& plan) {
  c10::InferenceMode inference;
  detail::EvalGuard eval(model.module());
  detail::BatchInvariantProducts invariant(options.batch_invariant());
  // Generators of requests that ended are dropped; new ones made. A
  // preempted request keeps its own while it waits, so its draws go on
  // where they stopped.
  for (int64_t id : plan.ended) {
    generators.erase(id);
  }
  for (const auto& q : plan.sequences) {
    if (!q.greedy && (q.starts || generators.count(q.request) == 0)) {
      generators.insert_or_assign(
          q.request, at::detail::createCPUGenerator(q.seed));
    }
  }

  auto logits = model.forward_paged(plan.batch, cache);
  const int64_t n = static_cast<int64_t>(plan.sequences.size());
  auto sampling = SamplingOptions()
                      .vocab_size(model.vocab_size())
                      .group(group)
                      .vocab_partition(model.vocab_partition());
  // Greedy rows in one call; each sampled row with its own generator, in
  // the plan's order (the same calls, so the same collectives, on every
  // rank).
  // A sequence still between chunks of its prompt picks nothing (-1).
  auto tokens = torch::full({n}, -1, torch::kLong);
  std::vector<int64_t> greedy;
  for (int64_t i = 0; i < n; ++i) {
    if (plan.sequences[i].samples && plan.sequences[i].greedy) {
      greedy.push_back(i);
    }
  }
  if (!greedy.empty()) {
    auto rows = torch::tensor(greedy, torch::kLong);
    static auto unused = at::detail::createCPUGenerator(0);
    tokens.index_copy_(
        0, rows,
        sample_next_token(
            logits.index_select(0, rows), unused,
            SamplingOptions(sampling).greedy(true)));
  }
  for (int64_t i = 0; i < n; ++i) {
    const auto& q = plan.sequences[i];
    if (!q.samples || q.greedy) {
      continue;
    }
    tokens.narrow(0, i, 1).copy_(sample_next_token(
        logits.narrow(0, i, 1), generators.at(q.request),
        SamplingOptions(sampling)
            .temperature(q.temperature)
            .top_k(q.top_k)
            .top_p(q.top_p)));
  }
  return tokens;
}

std::vector<RequestUpdate> Engine::step() {
  auto& s = *state_;
  s.check_rank0("step");
  auto updates = s.take_cancels_and_admit();
  std::vector<State::Scheduled> scheduled;
  auto plan = s.plan(scheduled);
  detail::broadcast_plan(plan, s.group);
  int64_t prompt_tokens = 0;
  if (plan.kind == detail::StepPlan::Kind::run) {
    const auto tokens = s.run(plan);
    const auto* t = tokens.data_ptr<int64_t>();
    std::vector<bool> finished(s.running.size(), false);
    for (size_t i = 0; i < scheduled.size(); ++i) {
      auto& r = *s.running[scheduled[i].index];
      if (r.preemptions == 0) {
        prompt_tokens += std::max<int64_t>(
            0, std::min(r.prompt, r.cached + scheduled[i].tokens) - r.cached);
      }
      r.cached += scheduled[i].tokens;
      if (!scheduled[i].samples) {
        continue;
      }
      r.ids.push_back(t[i]);
      const auto& stop = r.options.stop_ids();
      FinishReason reason = FinishReason::none;
      if (std::find(stop.begin(), stop.end(), t[i]) != stop.end()) {
        reason = FinishReason::stop;
      } else if (r.generated() >= r.max_tokens) {
        reason = FinishReason::length;
      }
      updates.push_back({r.id, t[i], reason});
      if (reason != FinishReason::none) {
        s.free(r);
        s.ended.push_back(r.id);
        finished[scheduled[i].index] = true;
      }
    }
    std::vector<detail::EngineRequestPtr> still;
    for (size_t i = 0; i < s.running.size(); ++i) {
      if (!finished[i]) {
        still.push_back(std::move(s.running[i]));
      }
    }
    s.running = std::move(still);
  }
  std::lock_guard<std::mutex> lock(s.mutex);
  s.stats.running = static_cast<int64_t>(s.running.size());
  s.stats.blocks_used =
      s.cache.num_blocks - static_cast<int64_t>(s.free_blocks.size());
  s.stats.steps += plan.kind == detail::StepPlan::Kind::run;
  s.stats.prompt_tokens += prompt_tokens;
  s.stats.generated_tokens += static_cast<int64_t>(std::count_if(
      updates.begin(), updates.end(),
      [](const RequestUpdate& u) { return u.token >= 0; }));
  return updates;
}

void Engine::shutdown() {
  auto& s = *state_;
  s.check_rank0("shutdown");
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.shut = true;
  }
  detail::StepPlan plan;
  plan.kind = detail::StepPlan::Kind::shutdown;
  detail::broadcast_plan(plan, s.group);
}

void Engine::follow() {
  auto& s = *state_;
  TORCHTP_CHECK(
      s.group.rank() != 0, kEngine, s.group,
      "follow() is for the ranks other than 0, which decides the steps");
  for (;;) {
    detail::StepPlan plan;
    detail::broadcast_plan(plan, s.group);
    if (plan.kind == detail::StepPlan::Kind::shutdown) {
      return;
    }
    if (plan.kind == detail::StepPlan::Kind::run) {
      s.run(plan);
    }
  }
}

} // namespace torchtp
