#include "connector.h"
#include "gloo_network.h"
#include "job_failure.h"
#include "collective_check.h"

#include "detail/check.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>
#include <mutex>
#include <utility>

namespace torchtp::detail {
namespace {

using Clock = std::chrono::steady_clock;

// How often a rank blocked in a collective looks for the job's first
// failure in the store: a peer that raised is then noticed within this,
// not at the timeout. Costs one store round trip per slice, only while
// blocked.
constexpr auto kPollEvery = std::chrono::milliseconds(50);
constexpr int64_t kSignatureWords = 5;

// What the waits of a communicator and of its pending handles share; the
// handles may outlive the communicator.
struct GlooState {
  std::string name;
  std::chrono::milliseconds timeout;
  std::shared_ptr<const PeerAddresses> peers;
  int world_rank = 0;
  // A collective failed or the job failed: the worker thread may be stuck
  // in a collective that will never complete, so the process group is not
  // joined at destruction.
  std::atomic<bool> broken{false};
  std::atomic<bool> aborted{false}; // torchtp::report_failure on this rank
};

c10d::ReduceOp to_c10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return c10d::ReduceOp::SUM;
    case ReduceOp::max:
      return c10d::ReduceOp::MAX;
    case ReduceOp::min:
      return c10d::ReduceOp::MIN;
  }
  TORCH_INTERNAL_ASSERT(false, "unknown ReduceOp");
}

// Gloo in libtorch 1.13 rejects bfloat16 ("Invalid scalar type") and sums
// float16 in float16. float32 holds every value of both exactly, so they
// travel as float32 and sum there: the result is the rounding of the exact
// float32 sum, as NCCL-style fp32 accumulation gives.
bool needs_widening(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

// Gloo runs collectives on its own thread, outside the caller's
// torch::InferenceMode, where writing into an inference tensor is refused:
// those travel through ordinary tensors too.
bool needs_staging(const at::Tensor& t) {
  return needs_widening(t) || t.is_inference();
}

at::Tensor wire_tensor(at::IntArrayRef sizes, at::ScalarType dtype) {
  c10::InferenceMode ordinary(false);
  return at::empty(sizes, at::TensorOptions().dtype(dtype));
}

at::ScalarType wire_dtype(const at::Tensor& t) {
  return needs_widening(t) ? at::kFloat : t.scalar_type();
}

at::Tensor on_wire(const at::Tensor& t) {
  if (!needs_staging(t)) {
    return t;
  }
  auto wire = wire_tensor(t.sizes(), wire_dtype(t));
  wire.copy_(t);
  return wire;
}

// The step after an in-place collective on `wire`: round a widened copy back
// into `dest`, and give `dest` as the result.
auto copy_back(at::Tensor wire, at::Tensor dest) {
  return [wire, dest]() mutable {
    if (!wire.is_same(dest)) {
      dest.copy_(wire);
    }
    return dest;
  };
}

// "torchtp::Group::all_reduce failed [rank 0/2] (backend gloo, group world,
// timeout 300 s"; the caller closes the parenthesis.
std::string failure_prefix(const char* op, int rank, int size,
                           const GlooState& state) {
  return std::string("torchtp::Group::") + op + " failed " +
         rank_label(rank, size) + " (backend gloo, group " + state.name +
         ", timeout " + std::to_string(state.timeout.count() / 1000) + " s";
}

// Gloo reports a dead peer as gloo::IoException, which is no c10::Error and
// would terminate the process if it escaped; every call goes through here.
// Its message gives the peer's address; the error names the rank. When the
// job's first failure is known (a peer reported it), that is the cause.
[[noreturn]] void raise_failure(
    const std::string& prefix,
    const std::exception& e,
    GlooState& state) {
  state.broken = true;
  const auto* error = dynamic_cast<const c10::Error*>(&e);
  const std::string what = error ? error->what_without_backtrace() : e.what();
  const std::string first = JobFailure::get().known(/*ask_store=*/true);
  if (!first.empty()) {
    TORCH_CHECK(
        false, prefix, "): ", kFirstFailure, first, " (here: ", what,
        state.peers->named_in(what), ")");
  }
  const std::string message = prefix +
      "; a peer rank may have exited, stopped responding, or raised an "
      "error before joining this collective): " +
      what + state.peers->named_in(what);
  JobFailure::get().record(
      "rank " + std::to_string(state.world_rank) + " raised: " + message);
  TORCH_CHECK(false, message);
}

// Raises when the job's first failure is known here or, with `ask_store`,
// in the store.
void raise_if_job_failed(
    const std::string& prefix, GlooState& state, bool ask_store) {
  if (!ask_store && !state.aborted.load(std::memory_order_acquire)) {
    return;
  }
  const std::string first = JobFailure::get().known(ask_store);
  if (!first.empty()) {
    state.broken = true;
    TORCH_CHECK(false, prefix, "): ", kFirstFailure, first);
  }
}

// Waits for `work` at most the timeout, in slices: between two, the job's
// first failure is looked for, so that a peer that raised ends this wait.
void wait_bounded(
    c10d::Work& work, const std::string& prefix, GlooState& state) {
  const auto deadline = Clock::now() + state.timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - Clock::now());
    try {
      work.wait(std::max(
          std::chrono::milliseconds(1), std::min(left, kPollEvery)));
      return;
    } catch (const std::exception& e) {
      // The slice ran out, but the collective may have completed since:
      // then waiting again returns at once, with its own result or error.
      if (work.isCompleted()) {
        try {
          work.wait(kPollEvery);
          return;
        } catch (const std::exception& error) {
          raise_failure(prefix, error, state);
        }
      }
      if (Clock::now() >= deadline) {
        raise_failure(prefix, e, state);
      }
    }
    raise_if_job_failed(prefix, state, /*ask_store=*/true);
  }
}

class GlooCommunicator final : public ConnectedCommunicator {
 public:
  GlooCommunicator(
      std::shared_ptr<Connector> connector,
      std::vector<int> world_ranks,
      std::string name)
      : ConnectedCommunicator(
            std::move(connector), std::move(world_ranks), std::move(name)),
        state_(std::make_shared<GlooState>()) {
    state_->name = this->name();
    state_->timeout = timeout_;
    state_->peers =
        std::make_shared<const PeerAddresses>(*connector_, world_ranks_);
    state_->world_rank = world_ranks_[rank_];
    auto options = c10d::ProcessGroupGloo::Options::create(timeout_);
    options->devices = {gloo_device(*connector_)};
    options->threads = 1;
    // Keys of this group live under its unique name.
    auto store = c10::make_intrusive<c10d::PrefixStore>(
        this->name(), connector_->store());
    guarded("connect", [&] {
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(
          store, rank_, size_, options);
    });
  }

  ~GlooCommunicator() override {
    // Joining a worker stuck in a collective that will never complete
    // would hold the process until the timeout: leave it to the exit.
    if (state_->broken || state_->aborted) {
      (void)pg_.release();
    }
  }

  std::string backend() const override {
    return "gloo";
  }

  void abort(const std::string&) override {
    state_->aborted = true;
    state_->broken = true;
  }

  Work all_reduce(at::Tensor& tensor, ReduceOp op) override {
    std::lock_guard<std::mutex> lock(issue_mutex_);
    agree("all_reduce",
          Signature::of(Op::all_reduce, tensor.scalar_type(), tensor.nbytes(), op));
    auto wire = on_wire(tensor);
    std::vector<at::Tensor> tensors{wire};
    c10d::AllreduceOptions opts;
    opts.reduceOp = to_c10d(op);
    opts.timeout = timeout_;
    c10::intrusive_ptr<c10d::Work> work;
    guarded("all_reduce", [&] { work = pg_->allreduce(tensors, opts); });
    return pending("all_reduce", work, copy_back(wire, tensor));
  }

  Work all_gather(const at::Tensor& input, at::Tensor& output) override {
    std::lock_guard<std::mutex> lock(issue_mutex_);
    agree("all_gather",
          Signature::of(Op::all_gather, input.scalar_type(), input.nbytes()));
    auto wire_in = on_wire(input);
    auto wire_out = needs_staging(output)
                        ? wire_tensor(output.sizes(), wire_dtype(output))
                        : output;
    // Gloo gathers into one tensor per rank; chunks of `wire_out` along dim 0
    // are contiguous views, so the blocks land in place.
    std::vector<std::vector<at::Tensor>> outputs{wire_out.chunk(size_, 0)};
    std::vector<at::Tensor> inputs{wire_in};
    c10d::AllgatherOptions opts;
    opts.timeout = timeout_;
    c10::intrusive_ptr<c10d::Work> work;
    guarded(
        "all_gather", [&] { work = pg_->allgather(outputs, inputs, opts); });
    return pending("all_gather", work, copy_back(wire_out, output));
  }

  // Gloo in libtorch 1.13 has no reduce_scatter. An all-to-all sends block r
  // of every rank to rank r, which then reduces the blocks it received: each
  // rank sends and receives (size-1)/size of the tensor once, half what an
  // all-reduce followed by a slice would move.
  Work reduce_scatter(
      const at::Tensor& input, at::Tensor& output, ReduceOp op) override {
    std::lock_guard<std::mutex> lock(issue_mutex_);
    agree("reduce_scatter",
          Signature::of(
              Op::reduce_scatter, input.scalar_type(), input.nbytes(), op));
    auto wire_in = on_wire(input);
    auto sizes = output.sizes().vec();
    sizes.insert(sizes.begin(), size_);
    auto received = wire_tensor(sizes, wire_in.scalar_type());
    std::vector<int64_t> counts; // empty: equal blocks
    c10d::AllToAllOptions opts;
    opts.timeout = timeout_;
    c10::intrusive_ptr<c10d::Work> work;
    guarded("reduce_scatter", [&] {
      work = pg_->alltoall_base(received, wire_in, counts, counts, opts);
    });
    return pending("reduce_scatter", work, [received, output, op]() mutable {
      // `received` may be wider than `output` (bfloat16 travels as float32):
      // reduce in its dtype, then round once.
      switch (op) {
        case ReduceOp::sum:
          output.copy_(received.sum(0));
          break;
        case ReduceOp::max:
          output.copy_(received.amax(0));
          break;
        case ReduceOp::min:
          output.copy_(received.amin(0));
          break;
      }
      return output;
    });
  }

  Work broadcast(at::Tensor& tensor, int root) override {
    std::lock_guard<std::mutex> lock(issue_mutex_);
    agree("broadcast",
          Signature::of(
              Op::broadcast, tensor.scalar_type(), tensor.nbytes(),
              c10::nullopt, root));
    auto wire = on_wire(tensor);
    std::vector<at::Tensor> tensors{wire};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    opts.timeout = timeout_;
    c10::intrusive_ptr<c10d::Work> work;
    guarded("broadcast", [&] { work = pg_->broadcast(tensors, opts); });
    return pending("broadcast", work, copy_back(wire, tensor));
  }

  // The signature exchange completes only once every rank made it: it is
  // the barrier.
  Work barrier() override {
    std::lock_guard<std::mutex> lock(issue_mutex_);
    agree("barrier", Signature::of(Op::barrier));
    return Work();
  }

 private:
  // Before every collective, the ranks check that they agree on what they
  // are about to do (operation, dtype, byte count, reduction, root). Gloo
  // cannot be given different sizes: its I/O thread throws
  // gloo::EnforceNotMet where nothing catches it, and the process aborts.
  // With this, every rank raises a c10::Error naming both calls, no data
  // moves, and the group stays usable. The check is one all-reduce (max) of
  // the signature and its negation, 80 bytes: all agree when the max of
  // every field equals its min. Only when they do not, an all-gather tells
  // who called what. Its price, one small round trip per collective, is in
  // README "Performance".
  void agree(const char* op, const Signature& mine) {
    const std::string prefix = failure_prefix(op, rank_, size_, *state_);
    raise_if_job_failed(prefix, *state_, /*ask_store=*/false);
    const int64_t words[kSignatureWords] = {
        mine.op, mine.dtype, mine.reduce, mine.root,
        static_cast<int64_t>(mine.bytes)};
    auto range = wire_tensor({2 * kSignatureWords}, at::kLong);
    auto* r = range.data_ptr<int64_t>();
    for (int64_t i = 0; i < kSignatureWords; ++i) {
      r[i] = words[i];
      r[kSignatureWords + i] = -words[i];
    }
    run_now(op, prefix, [&] {
      std::vector<at::Tensor> tensors{range};
      c10d::AllreduceOptions opts;
      opts.reduceOp = c10d::ReduceOp::MAX;
      opts.timeout = timeout_;
      return pg_->allreduce(tensors, opts);
    });
    bool same = true;
    for (int64_t i = 0; i < kSignatureWords; ++i) {
      same = same && r[i] == -r[kSignatureWords + i];
    }
    if (same) {
      return;
    }
    // Every rank saw the same max and min, so all of them are here.
    auto header = wire_tensor({kSignatureWords}, at::kLong);
    std::copy(words, words + kSignatureWords, header.data_ptr<int64_t>());
    auto all = wire_tensor({size_ * kSignatureWords}, at::kLong);
    run_now(op, prefix, [&] {
      std::vector<std::vector<at::Tensor>> outputs{all.chunk(size_, 0)};
      std::vector<at::Tensor> inputs{header};
      c10d::AllgatherOptions opts;
      opts.timeout = timeout_;
      return pg_->allgather(outputs, inputs, opts);
    });
    const auto* a = all.data_ptr<int64_t>();
    for (int j = 0; j < size_; ++j) {
      const int64_t* w = a + j * kSignatureWords;
      Signature theirs;
      theirs.op = static_cast<uint32_t>(w[0]);
      theirs.dtype = static_cast<int32_t>(w[1]);
      theirs.reduce = static_cast<int32_t>(w[2]);
      theirs.root = static_cast<int32_t>(w[3]);
      theirs.bytes = static_cast<uint64_t>(w[4]);
      TORCH_CHECK(theirs == mine, prefix, "): ", mine.mismatch(j, theirs));
    }
    TORCH_INTERNAL_ASSERT(false, "signatures differ, yet every rank's is ours");
  }

  // Issues the collective `issue` returns and waits for it.
  template <typename Issue>
  void run_now(const char* op, const std::string& prefix, Issue&& issue) {
    c10::intrusive_ptr<c10d::Work> work;
    guarded(op, [&] { work = issue(); });
    wait_bounded(*work, prefix, *state_);
  }

  template <typename F>
  void guarded(const char* op, F&& f) const {
    try {
      f();
    } catch (const std::exception& e) {
      raise_failure(failure_prefix(op, rank_, size_, *state_), e, *state_);
    }
  }

  template <typename F>
  Work pending(
      const char* op, c10::intrusive_ptr<c10d::Work> work, F&& then) const {
    // Captures values only: the handle may outlive this communicator.
    auto prefix = failure_prefix(op, rank_, size_, *state_);
    auto state = state_;
    return Work(
        [work, prefix, state, then]() mutable {
          wait_bounded(*work, prefix, *state);
          return then();
        },
        [work] { return work->isCompleted(); });
  }

  std::shared_ptr<GlooState> state_;
  // The signature exchange and the collective it announces are issued
  // together: two threads' collectives would otherwise interleave
  // differently on different ranks.
  std::mutex issue_mutex_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};

} // namespace

// A communicator over c10d's ProcessGroupGloo (TCP), for groups that span
// hosts or when TORCHTP_BACKEND=gloo; registered in backends.cpp.
c10::intrusive_ptr<Communicator> make_gloo_communicator(
    const std::shared_ptr<Connector>& connector,
    const std::vector<int>& world_ranks,
    const std::string& name) {
  return c10::make_intrusive<GlooCommunicator>(connector, world_ranks, name);
}

} // namespace torchtp::detail
