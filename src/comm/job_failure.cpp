#include "job_failure.h"

#include "rendezvous.h"

#include <chrono>
#include <cstdlib>
#include <thread>

namespace torchtp::detail {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kFailureKey = "torchtp/failure";
constexpr const char* kSeenKey = "torchtp/failure/seen";

std::string text(const std::vector<uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

} // namespace

JobFailure& JobFailure::get() {
  // Never destroyed: a rank may report from a terminate handler while static
  // destructors run.
  static JobFailure* instance = new JobFailure();
  return *instance;
}

void JobFailure::attach(
    const c10::intrusive_ptr<c10d::Store>& store,
    int world_rank,
    int world_size) {
  std::lock_guard<std::mutex> lock(mutex_);
  store_ = c10::weak_intrusive_ptr<c10d::Store>(store);
  world_rank_ = world_rank;
  world_size_ = world_size;
}

void JobFailure::add(const c10::intrusive_ptr<Communicator>& comm) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<c10::weak_intrusive_ptr<Communicator>> live;
  for (auto& c : comms_) {
    if (!c.expired()) {
      live.push_back(std::move(c));
    }
  }
  live.emplace_back(comm);
  comms_ = std::move(live);
}

int JobFailure::world_rank() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (world_rank_ >= 0) {
    return world_rank_;
  }
  const char* r = std::getenv("RANK");
  return r != nullptr ? std::atoi(r) : 0;
}

c10::intrusive_ptr<c10d::Store> JobFailure::store() const {
  return store_ ? store_->lock() : c10::intrusive_ptr<c10d::Store>();
}

// Counts this rank among those that know the failure (under mutex_).
void JobFailure::acknowledge(c10d::Store& store) {
  if (!acknowledged_) {
    acknowledged_ = true;
    store.add(kSeenKey, 1);
  }
}

std::string JobFailure::record(const std::string& message) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (first_.empty()) {
    first_ = message;
    if (auto s = store()) {
      try {
        first_ = text(s->compareSet(
            kFailureKey, {}, std::vector<uint8_t>(message.begin(), message.end())));
        acknowledge(*s);
      } catch (const std::exception&) {
        // The store is gone (rank 0 exited): this rank's is all it knows.
      }
    }
    any_.store(true, std::memory_order_release);
  }
  return first_;
}

std::string JobFailure::report(const std::string& message) {
  const std::string first = record(message);
  std::vector<c10::intrusive_ptr<Communicator>> comms;
  c10::intrusive_ptr<c10d::Store> s;
  int world_rank = 0, world_size = 1;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& c : comms_) {
      if (auto live = c.lock()) {
        comms.push_back(std::move(live));
      }
    }
    s = store();
    world_rank = world_rank_;
    world_size = world_size_;
  }
  for (auto& c : comms) {
    c->abort(first);
  }
  if (world_rank == 0 && s) {
    const auto until = Clock::now() + kStoreServerLinger;
    try {
      while (Clock::now() < until && s->add(kSeenKey, 0) < world_size) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    } catch (const std::exception&) {
    }
  }
  return first;
}

std::string JobFailure::known(bool ask_store) {
  if (any_.load(std::memory_order_acquire) || !ask_store) {
    std::lock_guard<std::mutex> lock(mutex_);
    return first_;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (!first_.empty()) {
    return first_;
  }
  if (auto s = store()) {
    try {
      if (s->check({kFailureKey})) {
        first_ = text(s->get(kFailureKey));
        acknowledge(*s);
        any_.store(true, std::memory_order_release);
      }
    } catch (const std::exception&) {
    }
  }
  return first_;
}

} // namespace torchtp::detail
