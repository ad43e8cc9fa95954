#include "torchtp/data_parallel.h"

#include "torchtp/sharding.h"

#include <torch/torch.h>

#include <cmath>
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

double clip_grad_norm(torch::nn::Module& module, double max_norm) {
  Group group = shard_group(module);
  const auto specs = shard_specs(module);
  torch::NoGradGuard no_grad;
  // Squares of split gradients are summed over the group; replicated ones
  // are the same on every rank and are added after the all-reduce.
  auto split = torch::zeros({1}, torch::kDouble);
  double replicated = 0;
  std::vector<torch::Tensor> grads;
  for (const auto& p : module.named_parameters()) {
    const auto& g = p.value().grad();
    if (!g.defined()) {
      continue;
    }
    grads.push_back(g);
    const auto& spec = specs.at(p.key());
    if (spec.is_replicated()) {
      replicated += g.to(torch::kDouble).square().sum().item<double>();
      continue;
    }
    // Only the indices this rank owns: a key/value head that several ranks
    // hold counts once.
    const int64_t full = full_shape(g.sizes(), spec, group)[spec.dim];
    for (const auto& r : owned_ranges(
             spec, full, group.size(), group.rank(), "clip_grad_norm")) {
      split += g.narrow(spec.dim, r.to, r.length)
                   .to(torch::kDouble)
                   .square()
                   .sum();
    }
  }
  group.all_reduce(split);
  const double norm = std::sqrt(split.item<double>() + replicated);
  // torch's clip_grad_norm_ adds 1e-6 the same way.
  const double scale = max_norm / (norm + 1e-6);
  if (scale < 1) {
    for (auto& g : grads) {
      g.mul_(scale);
    }
  }
  return norm;
}

} // namespace torchtp
