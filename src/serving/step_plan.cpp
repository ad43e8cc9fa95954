#include "serving/step_plan.h"

#include <ATen/ATen.h>

#include <cstring>

namespace torchtp::detail {
namespace {

constexpr int64_t kSequenceFields = 8;

int64_t bits_of(double x) {
  int64_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

double double_of(int64_t bits) {
  double x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

} // namespace

void broadcast_plan(StepPlan& plan, const Group& group) {
  const bool root = group.rank() == 0;
  auto header = at::zeros({5}, at::kLong);
  if (root) {
    const auto& b = plan.batch;
    const bool run = plan.kind == StepPlan::Kind::run;
    header[0] = static_cast<int64_t>(plan.kind);
    header[1] = run ? b.block_tables.size(0) : 0;
    header[2] = run ? b.ids.numel() : 0;
    header[3] = run ? b.block_tables.size(1) : 0;
    header[4] = run ? static_cast<int64_t>(plan.ended.size()) : 0;
  }
  group.broadcast(header, 0);
  const auto* h = header.data_ptr<int64_t>();
  plan.kind = static_cast<StepPlan::Kind>(h[0]);
  if (plan.kind != StepPlan::Kind::run) {
    return;
  }
  const int64_t n = h[1], t = h[2], max_blocks = h[3], ended = h[4];
  at::Tensor body;
  if (root) {
    const auto& b = plan.batch;
    auto sequences = at::empty({n, kSequenceFields}, at::kLong);
    auto* s = sequences.data_ptr<int64_t>();
    for (const auto& q : plan.sequences) {
      *s++ = q.request;
      *s++ = q.starts;
      *s++ = static_cast<int64_t>(q.seed);
      *s++ = q.greedy;
      *s++ = bits_of(q.temperature);
      *s++ = q.top_k;
      *s++ = bits_of(q.top_p);
      *s++ = q.samples;
    }
    body = at::cat(
        {b.ids, b.positions, b.token_seq, b.slots, b.block_tables.reshape(-1),
         b.logits_rows, sequences.reshape(-1),
         at::tensor(plan.ended, at::kLong)});
  } else {
    body = at::empty(
        {4 * t + n * max_blocks + n + n * kSequenceFields + ended}, at::kLong);
  }
  group.broadcast(body, 0);
  if (root) {
    return;
  }
  int64_t at_ = 0;
  auto take = [&](int64_t count) {
    auto part = body.narrow(0, at_, count);
    at_ += count;
    return part;
  };
  auto& b = plan.batch;
  b.ids = take(t);
  b.positions = take(t);
  b.token_seq = take(t);
  b.slots = take(t);
  b.block_tables = take(n * max_blocks).view({n, max_blocks});
  b.logits_rows = take(n);
  const auto* s = take(n * kSequenceFields).data_ptr<int64_t>();
  plan.sequences.assign(n, {});
  for (auto& q : plan.sequences) {
    q.request = *s++;
    q.starts = *s++ != 0;
    q.seed = static_cast<uint64_t>(*s++);
    q.greedy = *s++ != 0;
    q.temperature = double_of(*s++);
    q.top_k = *s++;
    q.top_p = double_of(*s++);
    q.samples = *s++ != 0;
  }
  const auto* e = take(ended).data_ptr<int64_t>();
  plan.ended.assign(e, e + ended);
}

} // namespace torchtp::detail
