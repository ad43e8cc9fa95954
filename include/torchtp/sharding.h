#pragma once

#include "torchtp/group.h"

#include <torch/nn/module.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace torchtp {

/// How one parameter is split over a tensor-parallel group: along `dim`
/// (-1: replicated, every rank holds it whole), with that dim made of
/// `segments` equal blocks each split by a `Partition` (a fused Q, K, V
/// weight has 3). Checkpoints use it to save, reshard and load.
struct ShardSpec {
  int64_t dim = -1;
  int64_t segments = 1;
};

/// Implemented by every torchtp module that holds split parameters.
class Sharded {
 public:
  virtual ~Sharded() = default;
  /// The split of the parameter registered as `name` on this module.
  virtual ShardSpec shard_spec(const std::string& name) const = 0;
  /// The group the parameters are split over.
  virtual const Group& shard_group() const = 0;
};

/// The full shape of a parameter whose shard on this rank has shape `local`.
std::vector<int64_t> full_shape(
    at::IntArrayRef local, const ShardSpec& spec, const Group& group);

/// This rank's shard of the full tensor `full` (a view when it can be): along
/// `spec.dim`, its part of each of the `spec.segments` blocks, blocks kept in
/// order; `full` itself when replicated. `what` names the tensor in the
/// error raised when a block does not divide.
at::Tensor shard_of(
    const at::Tensor& full,
    const ShardSpec& spec,
    const Group& group,
    const std::string& what);

/// Every parameter of `model` (named as `named_parameters()` names them) with
/// its split; parameters of ordinary torch modules are replicated.
std::map<std::string, ShardSpec> shard_specs(const torch::nn::Module& model);

/// The tensor-parallel group of `model`'s split parameters; the default group
/// when it has none. Raises `c10::Error` when they use different groups.
Group shard_group(const torch::nn::Module& model);

} // namespace torchtp
