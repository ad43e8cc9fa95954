#include "gloo_communicator.h"

#include "connector.h"

#include "torchtp/detail/check.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <algorithm>
#include <exception>
#include <memory>
#include <utility>

namespace torchtp::detail {
namespace {

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

class GlooCommunicator final : public ConnectedCommunicator {
 public:
  GlooCommunicator(
      std::shared_ptr<Connector> connector,
      std::vector<int> world_ranks,
      std::string name)
      : ConnectedCommunicator(
            std::move(connector), std::move(world_ranks), std::move(name)) {
    auto options = c10d::ProcessGroupGloo::Options::create(timeout_);
    options->devices = {connector_->gloo_device()};
    peers_ = std::make_shared<const PeerAddresses>(
        connector_->peer_addresses(world_ranks_));
    options->threads = 1;
    // Keys of this group live under its unique name.
    auto store = c10::make_intrusive<c10d::PrefixStore>(
        this->name(), connector_->store());
    guarded("connect", [&] {
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(
          store, rank_, size_, options);
    });
  }

  std::string backend() const override {
    return "gloo";
  }

  Work all_reduce(at::Tensor& tensor, ReduceOp op) override {
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

  Work barrier() override {
    c10d::BarrierOptions opts;
    opts.timeout = timeout_;
    c10::intrusive_ptr<c10d::Work> work;
    guarded("barrier", [&] { work = pg_->barrier(opts); });
    return pending("barrier", work, [] { return at::Tensor(); });
  }

 private:
  std::string failure(const char* op) const {
    return std::string("torchtp::Group::") + op + " failed " +
           rank_label(rank_, size_) + " (backend gloo, group " + name() +
           ", timeout " + std::to_string(timeout_.count() / 1000) +
           " s; a peer rank may have exited, stopped responding, or raised an "
           "error before joining this collective): ";
  }

  // Gloo reports a dead peer as gloo::IoException, which is no c10::Error and
  // would terminate the process if it escaped; every call goes through
  // here. Its message gives the peer's address; the error names the rank.
  static void raise(
      const std::string& prefix,
      const std::exception& e,
      const PeerAddresses& peers) {
    const auto* error = dynamic_cast<const c10::Error*>(&e);
    const std::string what = error ? error->what_without_backtrace() : e.what();
    TORCH_CHECK(false, prefix, what, peers.named_in(what));
  }

  template <typename F>
  void guarded(const char* op, F&& f) const {
    try {
      f();
    } catch (const std::exception& e) {
      raise(failure(op), e, *peers_);
    }
  }

  template <typename F>
  Work pending(
      const char* op, c10::intrusive_ptr<c10d::Work> work, F&& then) const {
    // Captures values only: the handle may outlive this communicator.
    auto timeout = timeout_;
    auto prefix = failure(op);
    auto peers = peers_;
    return Work(
        [work, timeout, prefix, peers, then]() mutable {
          try {
            work->wait(timeout);
          } catch (const std::exception& e) {
            raise(prefix, e, *peers);
          }
          return then();
        },
        [work] { return work->isCompleted(); });
  }

  std::shared_ptr<const PeerAddresses> peers_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};

} // namespace

c10::intrusive_ptr<Communicator> make_gloo_communicator(
    const std::shared_ptr<Connector>& connector,
    const std::vector<int>& world_ranks,
    const std::string& name) {
  return c10::make_intrusive<GlooCommunicator>(connector, world_ranks, name);
}

} // namespace torchtp::detail
