#include "torchtp/data_parallel.h"

#include <torch/torch.h>

#include <map>

namespace torchtp {

void average_gradients(torch::nn::Module& module, const Group& data_group) {
  if (data_group.size() == 1) {
    return;
  }
  std::map<c10::ScalarType, std::vector<torch::Tensor>> by_dtype;
  for (auto& p : module.parameters()) {
    if (p.grad().defined()) {
      by_dtype[p.grad().scalar_type()].push_back(p.grad());
    }
  }
  torch::NoGradGuard no_grad;
  for (auto& [dtype, grads] : by_dtype) {
    std::vector<torch::Tensor> flat;
    for (const auto& g : grads) {
      flat.push_back(g.reshape({-1}));
    }
    auto buffer = torch::cat(flat);
    data_group.all_reduce(buffer);
    buffer.div_(data_group.size());
    int64_t offset = 0;
    for (auto& g : grads) {
      g.copy_(buffer.narrow(0, offset, g.numel()).view_as(g));
      offset += g.numel();
    }
  }
}

} // namespace torchtp
