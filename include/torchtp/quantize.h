#pragma once

#include <torch/nn/module.h>

namespace torchtp {

/// Serves `module` with int8 weights: every torchtp layer inside it
/// (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding, and
/// so the blocks, the GPT and its tied output layer) has its weight
/// replaced, in place, by symmetric int8 with one float32 scale per output
/// row (the buffer `weight_scale`): `w ≈ q * scale`, `scale = max|w_row| /
/// 127`. The scale of a row is taken over the WHOLE row, also where a rank
/// holds only part of it (RowParallelLinear: the rows' largest magnitudes
/// are all-reduced), so every tensor-parallel size serves the same
/// dequantized weights. Activations, biases and norms keep the model's
/// dtype (float32 or bfloat16); products widen the int8 weight in
/// registers (a quarter of float32's memory traffic).
///
/// Collective: every rank of each layer's group calls it, on the same
/// model. Afterwards the weights have no gradient (serving only), and
/// calling it again raises. The float32 weights' memory is freed as each
/// layer is done. `clone()` of a quantized module gives an int8 copy (a
/// layer's `reset()` keeps it int8, with zero weights and unit scales).
void quantize_int8(torch::nn::Module& module);

} // namespace torchtp
