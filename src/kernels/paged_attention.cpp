#include "detail/paged_attention.h"
#include "detail/bfloat16_bits.h"
#include "detail/weight_kernels.h"

#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace torchtp::detail {
namespace {

using element::widen; // float32 and bfloat16 bits
inline double widen(double d) {
  return d;
}

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
constexpr int kLanes = 8;
using V = __m256;
using VI = __v8si;
inline V vload(const float* p) {
  return _mm256_loadu_ps(p);
}
inline V vload(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline V vfma(V a, V b, V c) {
  return _mm256_fmadd_ps(a, b, c);
}
inline V vmax(V a, V b) {
  return _mm256_max_ps(a, b);
}
inline V vbroadcast(float f) {
  return _mm256_set1_ps(f);
}
// glibc's vector exponential (libmvec; the x86 vector-function ABI's name
// for eight floats in a ymm register), declared under this set's pragma.
extern "C" __m256 _ZGVdN8v_expf(__m256);
inline V vexp(V x) {
  return _ZGVdN8v_expf(x);
}
#include "paged_attention_vectors.inc"
#include "paged_attention.inc"
} // namespace avx2
#pragma GCC pop_options

// GCC 12's AVX-512 headers leave "undefined" registers self-initialised,
// which -Wmaybe-uninitialized reports (as in weight_kernels.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace avx512 {
constexpr int kLanes = 16;
using V = __m512;
using VI = __v16si;
inline V vload(const float* p) {
  return _mm512_loadu_ps(p);
}
inline V vload(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline V vfma(V a, V b, V c) {
  return _mm512_fmadd_ps(a, b, c);
}
inline V vmax(V a, V b) {
  return _mm512_max_ps(a, b);
}
inline V vbroadcast(float f) {
  return _mm512_set1_ps(f);
}
// libmvec's sixteen floats in a zmm register.
extern "C" __m512 _ZGVeN16v_expf(__m512);
inline V vexp(V x) {
  return _ZGVeN16v_expf(x);
}
#include "paged_attention_vectors.inc"
#include "paged_attention.inc"
} // namespace avx512
#pragma GCC pop_options
#pragma GCC diagnostic pop

} // namespace

template <typename T, typename S>
void paged_attention(
    const T* q,
    const S* k_pool,
    const S* v_pool,
    const int64_t* kv_of_head,
    const int64_t* token_seq,
    const int64_t* token_pos,
    const int64_t* block_tables,
    double scale,
    T* out,
    const PagedAttentionShape& shape,
    const bool* key_mask) {
  PagedAttentionShape s = shape;
  if (s.slot_stride == 0) {
    s.slot_stride = s.kv_heads * s.head_dim;
  }
  if (s.head_stride == 0) {
    s.head_stride = s.head_dim;
  }
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
  auto* tasks_in = isa == Isa::avx512 || isa == Isa::avx512_bf16
                       ? &avx512::attend_tasks<T, S>
                   : isa == Isa::avx2 ? &avx2::attend_tasks<T, S>
                                      : &generic::attend_tasks<T, S>;
  const T typed_scale = static_cast<T>(scale);
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    tasks_in(
        q, k_pool, v_pool, kv_of_head, token_seq, token_pos, block_tables,
        key_mask, typed_scale, out, s, begin, end);
  });
}

#define TORCHTP_PAGED_ATTENTION(T, S)                                      \
  template void paged_attention<T, S>(                                     \
      const T*, const S*, const S*, const int64_t*, const int64_t*,        \
      const int64_t*, const int64_t*, double, T*, const PagedAttentionShape&, \
      const bool*);
TORCHTP_PAGED_ATTENTION(float, float)
TORCHTP_PAGED_ATTENTION(double, double)
TORCHTP_PAGED_ATTENTION(float, uint16_t)
#undef TORCHTP_PAGED_ATTENTION

} // namespace torchtp::detail
