#pragma once

#include <torch/nn/module.h>

namespace torchtp::detail {

/// Puts a module in evaluation mode (no dropout) and restores its training
/// flag on every exit.
struct EvalGuard {
  explicit EvalGuard(torch::nn::Module& m)
      : model(m), was_training(m.is_training()) {
    model.eval();
  }
  ~EvalGuard() {
    model.train(was_training);
  }
  EvalGuard(const EvalGuard&) = delete;
  EvalGuard& operator=(const EvalGuard&) = delete;
  torch::nn::Module& model;
  bool was_training;
};

} // namespace torchtp::detail
