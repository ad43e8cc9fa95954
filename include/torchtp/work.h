#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>

namespace torchtp {

/// Handle of an asynchronous collective. `wait()` blocks until the collective
/// finished (or raises a `c10::Error` naming the rank, when a peer died or the
/// group's timeout passed) and returns its result: the reduced tensor for
/// in-place collectives, the new tensor for gathers and scatters.
///
/// A handle is cheap to copy; every copy waits on the same collective, and
/// waiting twice returns the same result. Wait before reading or reusing the
/// tensors the collective was given.
class Work {
 public:
  /// A finished collective whose result is `result`.
  explicit Work(at::Tensor result = {});
  /// A pending collective: `finish` blocks until it is done and returns the
  /// result. It runs once, on the first `wait()`. `ready`, when given, tells
  /// without blocking whether `finish` would return at once.
  explicit Work(
      std::function<at::Tensor()> finish,
      std::function<bool()> ready = nullptr);

  at::Tensor wait();
  /// True once the collective finished (waited or not): a caller can poll
  /// it and do other work meanwhile. Still call `wait()` for the result.
  bool is_completed() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

} // namespace torchtp
