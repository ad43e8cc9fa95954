#pragma once

#include "torchtp/group.h"

#include <torch/nn/module.h>

namespace torchtp {

/// Averages the gradients of `module`'s parameters over the data-parallel
/// group, as each replica saw a different part of the batch: after it every
/// replica holds the gradient of the mean loss over all their data. One
/// all-reduce over a single flat buffer per dtype (no per-parameter
/// latency). Parameters without a gradient are skipped; every replica must
/// have the same set. A group of one rank does nothing.
///
/// Example (tensor x data parallel on 4 ranks):
/// ```
///   auto pg = torchtp::make_parallel_groups(world,
///   /*tensor_parallel_size=*/2); torchtp::GPT gpt(torchtp::GPTOptions(vocab,
///   seq).group(pg.tensor)); gpt->loss(my_part_of_batch, targets).backward();
///   torchtp::average_gradients(*gpt, pg.data);
///   optimizer.step();
/// ```
void average_gradients(torch::nn::Module& module, const Group& data_group);

/// `torch::nn::utils::clip_grad_norm_` for a tensor-parallel model: the norm
/// is that of the FULL gradient, with each split parameter's shards summed
/// over the model's tensor-parallel group and each replicated parameter
/// counted once. Scales every gradient by max_norm / norm when the norm is
/// larger; returns the norm (the same on every rank). Call it after
/// `average_gradients`.
double clip_grad_norm(torch::nn::Module& module, double max_norm);

} // namespace torchtp
