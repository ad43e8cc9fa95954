#include "detail/paged_attention.h"
#include "detail/weight_kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace torchtp::detail {
namespace {

// One copy per instruction set, chosen at run time as the weight kernels
// are (TORCHTP_KERNELS forces one; tests run each the CPU has). With FMA
// the products are fused, so the copies differ in the last bits; each
// still sums in one order whatever the batch.
namespace generic {
#include "paged_attention.inc"
} // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "paged_attention.inc"
} // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace avx512 {
#include "paged_attention.inc"
} // namespace avx512
#pragma GCC pop_options

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
  const Isa isa = kernel_choice().isa;
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    const T typed_scale = static_cast<T>(scale);
    switch (isa) {
      case Isa::avx512:
      case Isa::avx512_bf16:
        avx512::attend_tasks(
            q, k_pool, v_pool, kv_of_head, token_seq, token_pos, block_tables,
            typed_scale, out, s, begin, end);
        break;
      case Isa::avx2:
        avx2::attend_tasks(
            q, k_pool, v_pool, kv_of_head, token_seq, token_pos, block_tables,
            typed_scale, out, s, begin, end);
        break;
      case Isa::generic:
        generic::attend_tasks(
            q, k_pool, v_pool, kv_of_head, token_seq, token_pos, block_tables,
            typed_scale, out, s, begin, end);
        break;
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
