#include "communicator.h"

#include <c10/util/Exception.h>

namespace torchtp::detail {
namespace {

/// One process: every collective is the identity. Lets the layers, the model
/// and the tests run unchanged at world size 1 without a store or a socket.
class SelfCommunicator final : public Communicator {
 public:
  SelfCommunicator() : Communicator("self") {}

  int rank() const override {
    return 0;
  }
  int size() const override {
    return 1;
  }
  std::string backend() const override {
    return "self";
  }
  std::chrono::milliseconds timeout() const override {
    return std::chrono::milliseconds::max();
  }
  Work all_reduce(at::Tensor& tensor, ReduceOp) override {
    return Work(tensor);
  }
  Work all_gather(const at::Tensor& input, at::Tensor& output) override {
    output.copy_(input);
    return Work(output);
  }
  Work reduce_scatter(
      const at::Tensor& input, at::Tensor& output, ReduceOp) override {
    output.copy_(input);
    return Work(output);
  }
  Work broadcast(at::Tensor& tensor, int root) override {
    TORCH_CHECK(
        root == 0, "torchtp::Group::broadcast: root ", root,
        " is not a rank of a one-rank group [rank 0/1]");
    return Work(tensor);
  }
  Work barrier() override {
    return Work();
  }
  c10::intrusive_ptr<Communicator> split(
      const std::vector<int>& ranks,
      const std::string&,
      const std::string&) override {
    TORCH_INTERNAL_ASSERT(ranks.size() == 1 && ranks[0] == 0);
    return c10::make_intrusive<SelfCommunicator>();
  }
};

} // namespace

c10::intrusive_ptr<Communicator> make_self_communicator() {
  return c10::make_intrusive<SelfCommunicator>();
}

} // namespace torchtp::detail
