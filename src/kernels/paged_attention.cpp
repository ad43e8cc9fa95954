#include "detail/paged_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace torchtp::detail {
namespace {

// Eight independent partial sums: a loop the compiler vectorises without
// reassociating (no -ffast-math), and one fixed order of additions.
template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  constexpr int kLanes = 8;
  T part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      part[l] += a[i + l] * b[i + l];
    }
  }
  T sum = 0;
  for (int l = 0; l < kLanes; ++l) {
    sum += part[l];
  }
  for (; i < n; ++i) {
    sum += a[i] * b[i];
  }
  return sum;
}

template <typename T>
void attend_row(
    const T* q,
    const T* k_pool,
    const T* v_pool,
    int64_t kv_head,
    const int64_t* table,
    int64_t length,
    T scale,
    T* out,
    const PagedAttentionShape& s,
    std::vector<T>& scores) {
  const int64_t hd = s.head_dim;
  const int64_t stride = s.kv_heads * hd; // between slots
  auto slot = [&](int64_t j) {
    return table[j / s.block_size] * s.block_size + j % s.block_size;
  };
  scores.resize(length);
  T top = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < length; ++j) {
    const T* k = k_pool + slot(j) * stride + kv_head * hd;
    scores[j] = dot(q, k, hd) * scale;
    top = std::max(top, scores[j]);
  }
  T total = 0;
  for (int64_t j = 0; j < length; ++j) {
    scores[j] = std::exp(scores[j] - top);
    total += scores[j];
  }
  std::fill(out, out + hd, T(0));
  for (int64_t j = 0; j < length; ++j) {
    const T* v = v_pool + slot(j) * stride + kv_head * hd;
    const T w = scores[j];
    for (int64_t i = 0; i < hd; ++i) {
      out[i] += w * v[i];
    }
  }
  const T inverse = T(1) / total;
  for (int64_t i = 0; i < hd; ++i) {
    out[i] *= inverse;
  }
}

} // namespace

template <typename T>
void paged_attention(
    const T* q,
    const T* k_pool,
    const T* v_pool,
    const int64_t* kv_of_head,
    const int64_t* token_seq,
    const int64_t* token_pos,
    const int64_t* block_tables,
    double scale,
    T* out,
    const PagedAttentionShape& s) {
  const int64_t tasks = s.tokens * s.heads;
  if (tasks == 0) {
    return;
  }
  // Below about 64k multiply-adds a step runs on the calling thread: waking
  // the pool would cost more.
  int64_t work = 0;
  for (int64_t t = 0; t < s.tokens; ++t) {
    work += (token_pos[t] + 1) * s.heads * s.head_dim;
  }
  const int64_t grain = work < (int64_t{1} << 16) ? tasks : 1;
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / s.heads, h = task % s.heads;
      const int64_t offset = (t * s.heads + h) * s.head_dim;
      attend_row(
          q + offset, k_pool, v_pool, kv_of_head[h],
          block_tables + token_seq[t] * s.max_blocks, token_pos[t] + 1,
          static_cast<T>(scale), out + offset, s, scores);
    }
  });
}

template void paged_attention<float>(
    const float*,
    const float*,
    const float*,
    const int64_t*,
    const int64_t*,
    const int64_t*,
    const int64_t*,
    double,
    float*,
    const PagedAttentionShape&);
template void paged_attention<double>(
    const double*,
    const double*,
    const double*,
    const int64_t*,
    const int64_t*,
    const int64_t*,
    const int64_t*,
    double,
    double*,
    const PagedAttentionShape&);

} // namespace torchtp::detail
