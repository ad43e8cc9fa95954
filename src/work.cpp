#include "torchtp/work.h"

#include <mutex>
#include <utility>

namespace torchtp {

struct Work::State {
  std::mutex mutex;
  std::function<at::Tensor()> finish;
  std::function<bool()> ready;
  at::Tensor result;
  bool done = false;
};

Work::Work(at::Tensor result) : state_(std::make_shared<State>()) {
  state_->result = std::move(result);
  state_->done = true;
}

Work::Work(std::function<at::Tensor()> finish, std::function<bool()> ready)
    : state_(std::make_shared<State>()) {
  state_->finish = std::move(finish);
  state_->ready = std::move(ready);
}

at::Tensor Work::wait() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (!state_->done) {
    // Mark done only on success: a failed wait raises every time it is asked.
    state_->result = state_->finish();
    state_->finish = nullptr;
    state_->ready = nullptr;
    state_->done = true;
  }
  return state_->result;
}

bool Work::is_completed() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->done || (state_->ready && state_->ready());
}

} // namespace torchtp
