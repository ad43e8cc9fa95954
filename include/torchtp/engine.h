#pragma once

#include "torchtp/causal_lm.h"
#include "torchtp/sampling.h"

#include <torch/arg.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace torchtp {

/// Options of `Engine`.
struct EngineOptions {
  /// Sequences in one step at most (prefilling and decoding together).
  TORCH_ARG(int64_t, max_batch) = 16;
  /// Positions per key/value block.
  TORCH_ARG(int64_t, block_size) = 16;
  /// Positions the key/value pool holds over all sequences (rounded up to
  /// whole blocks). 0: `max_batch` full contexts.
  TORCH_ARG(int64_t, kv_cache_tokens) = 0;
  /// What the key/value pool stores (float32, bfloat16 or float64): for a
  /// float32 or int8 model bfloat16 holds twice the positions in the same
  /// bytes and halves what attention reads, each key and value rounded
  /// once when stored. None: the model's dtype (float32 for int8 models).
  TORCH_ARG(c10::optional<torch::Dtype>, kv_cache_dtype) = c10::nullopt;
  /// Requests waiting for room at most; past it `add_request` refuses.
  TORCH_ARG(int64_t, max_queue) = 256;
  /// Prompt tokens prefilled in one step at most, over all requests. A
  /// longer prompt is prefilled in chunks over several steps (chunked
  /// prefill), each beside the decoding sequences' next tokens: the bound
  /// on how long one step, so every running request's next token, waits
  /// for prompts.
  TORCH_ARG(int64_t, max_prefill_tokens) = 2048;
  /// Make a request's logits independent of which others share its steps:
  /// every float32 product goes through torchtp's hand kernels, which sum
  /// each output in one order whatever the row count, so seeded sampling
  /// gives the same tokens alone and in any batch. Without it a step's
  /// logits differ in the last bits between steps of up to 16 rows (the
  /// kernels) and larger ones or prefills (sgemm): greedy tokens still agree
  /// except at near-ties, but a sampled token may not. Costs prefill time
  /// (docs/serving.md). float32 models only.
  TORCH_ARG(bool, batch_invariant) = false;
};

/// What one request asks of `Engine::add_request`.
struct RequestOptions {
  /// Greedy, temperature, top_k, top_p; its `vocab_size`, `group` and
  /// `vocab_partition` are the model's.
  TORCH_ARG(SamplingOptions, sampling) = SamplingOptions().greedy(true);
  /// Seed of this request's own generator: a sampled request gives the same
  /// tokens alone and in any batch.
  TORCH_ARG(uint64_t, seed) = 0;
  /// Tokens generated at most; the context (`max_seq_len`, prompt
  /// included) may end it sooner.
  TORCH_ARG(int64_t, max_tokens) = 16;
  /// The request ends after generating any of these ids (reported, with
  /// `FinishReason::stop`).
  TORCH_ARG(std::vector<int64_t>, stop_ids) = {};
};

/// Why a request ended.
enum class FinishReason {
  /// Still running.
  none,
  /// It generated one of its stop ids.
  stop,
  /// It reached `max_tokens` or the end of the context.
  length,
  /// `Engine::cancel`.
  cancelled,
};

const char* finish_reason_name(FinishReason reason);

/// One step's news of one request.
struct RequestUpdate {
  int64_t id = -1;
  /// The token generated at this step; -1 when none (cancelled).
  int64_t token = -1;
  FinishReason finished = FinishReason::none;
};

/// What the engine holds now (rank 0).
struct EngineStats {
  int64_t waiting = 0;
  int64_t running = 0;
  int64_t blocks_used = 0;
  int64_t blocks_total = 0;
  /// Bytes of the key/value pool on this rank.
  int64_t kv_cache_bytes = 0;
  int64_t steps = 0;
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  /// Times a running request gave its blocks to others (and recomputed
  /// them when it ran again).
  int64_t preemptions = 0;
};

/// Continuous batching over a tensor-parallel `CausalLM`: requests arrive
/// at any time, join the running batch at the next step (their prompt
/// prefilled in that step, beside the others' next tokens), and leave when
/// done, freeing their key/value blocks at once.
///
/// Every rank runs the same steps. Rank 0 holds the requests: it decides
/// each step (which sequences, their tokens, positions and blocks) and
/// broadcasts it; the other ranks call `follow()`, which runs the steps it
/// receives until rank 0 calls `shutdown()`. `add_request`, `cancel`,
/// `stats` and `wait_for_work` are rank 0's and may be called from any
/// thread while another runs `step()`.
///
/// Blocks are taken as a sequence's positions fill. A request starts when
/// the free blocks hold its prompt; requests that do not fit wait in a
/// bounded queue, in order. When a running request needs a block and none
/// is free, the latest started one gives its blocks back and waits first
/// in the queue (preemption); when it runs again it recomputes its prompt
/// and the tokens it generated in one prefill, and its sampling goes on
/// from where it stopped. Batching does not change a request's tokens:
/// each sequence attends only to its own positions, and each request
/// samples from its own generator.
class Engine {
 public:
  /// Collective over `model.group()` (every rank makes its key/value pool
  /// with the same options).
  explicit Engine(CausalLM& model, const EngineOptions& options = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /// Rank 0: queues a request and returns its id. Raises a `c10::Error`
  /// (and queues nothing) when the prompt is empty or holds an id outside
  /// the vocabulary, leaves no room in the context for one token, needs
  /// more blocks than the whole pool, the sampling options are invalid, or
  /// `max_queue` requests already wait.
  int64_t add_request(
      const std::vector<int64_t>& prompt,
      const RequestOptions& options = {});
  /// Rank 0: ends a waiting or running request at the next step (an update
  /// with `FinishReason::cancelled`); an id that is unknown or finished is
  /// ignored.
  void cancel(int64_t id);
  /// Collective: one step. A step that raises (a collective failed: a
  /// rank died or timed out) leaves the engine unusable, its requests
  /// unanswered. Rank 0 starts the waiting requests that fit, runs
  /// every decoding sequence one token further and the prefilling ones a
  /// chunk of their prompts (preempting if blocks run out), and returns
  /// what each request got; with nothing to run it only tells the other ranks so
  /// (their collectives never time out while the engine is idle). Other
  /// ranks: use `follow()`.
  std::vector<RequestUpdate> step();
  /// Rank 0: waits until a request waits or runs, or `timeout` passed;
  /// whether there is work.
  bool wait_for_work(std::chrono::milliseconds timeout);
  /// Rank 0: the other ranks' `follow()` returns (collective with them).
  void shutdown();
  /// Ranks other than 0: runs the steps rank 0 decides until its
  /// `shutdown()`. Raises as the collectives do when rank 0 fails.
  void follow();
  /// Rank 0.
  EngineStats stats() const;
  const EngineOptions& options() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

} // namespace torchtp
