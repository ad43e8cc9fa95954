#include "reduce_kernels.h"

#include "detail/bfloat16_bits.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace torchtp::detail {
namespace {

template <typename T>
using accumulate_t = std::conditional_t<
    std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>,
    float,
    T>;

// Works through tiles that stay in L1: each input is read once (`load`
// widens it to the accumulator), the output written once (`store` rounds
// it back), and the inner loops vectorise.
template <
    typename Acc,
    typename T,
    typename Load,
    typename Store,
    typename Combine>
__attribute__((always_inline)) inline void reduce_tiles(
    T* out,
    const T* const* in,
    int n,
    int64_t len,
    Load load,
    Store store,
    Combine combine) {
  if constexpr (std::is_same_v<Acc, T>) {
    if (n == 2) { // the common case: one pass, no accumulator
      const T* a = in[0];
      const T* b = in[1];
      for (int64_t i = 0; i < len; ++i) {
        out[i] = combine(a[i], b[i]);
      }
      return;
    }
  }
  constexpr int64_t kTile = 1024;
  Acc acc[kTile];
  for (int64_t start = 0; start < len; start += kTile) {
    const int64_t m = std::min(kTile, len - start);
    const T* first = in[0] + start;
    for (int64_t i = 0; i < m; ++i) {
      acc[i] = load(first[i]);
    }
    for (int k = 1; k < n; ++k) {
      const T* next = in[k] + start;
      for (int64_t i = 0; i < m; ++i) {
        acc[i] = combine(acc[i], load(next[i]));
      }
    }
    T* o = out + start;
    for (int64_t i = 0; i < m; ++i) {
      o[i] = store(acc[i]);
    }
  }
}

__attribute__((always_inline)) inline void reduce_any(
    void* out,
    const void* const* in,
    int n,
    int64_t len,
    c10::ScalarType dtype,
    ReduceOp op) {
  AT_DISPATCH_ALL_TYPES_AND2(
      c10::kBFloat16, c10::kHalf, dtype, "torchtp_reduce_buffers", [&] {
        using Acc = accumulate_t<scalar_t>;
        auto run = [&](auto combine) {
          if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
            // On the raw bits: c10::BFloat16's conversions keep the loops
            // scalar (4x slower).
            reduce_tiles<float>(
                static_cast<uint16_t*>(out),
                reinterpret_cast<const uint16_t* const*>(in), n, len,
                from_bfloat16_bits, to_bfloat16_bits, combine);
          } else {
            reduce_tiles<Acc>(
                static_cast<scalar_t*>(out),
                reinterpret_cast<const scalar_t* const*>(in), n, len,
                [](scalar_t v) { return static_cast<Acc>(v); },
                [](Acc a) { return static_cast<scalar_t>(a); }, combine);
          }
        };
        switch (op) {
          case ReduceOp::sum:
            run([](Acc a, Acc b) { return static_cast<Acc>(a + b); });
            break;
          case ReduceOp::max:
            run([](Acc a, Acc b) { return (b > a || b != b) ? b : a; });
            break;
          case ReduceOp::min:
            run([](Acc a, Acc b) { return (b < a || b != b) ? b : a; });
            break;
        }
      });
}

// Debian builds for plain x86-64, whose SSE2 loops run at half the speed:
// the same code is also compiled for AVX2 (flatten inlines the loops into
// it) and picked at run time. No ifunc (target_clones): its resolver runs
// before the sanitizers are set up.
__attribute__((target("avx2,fma"), flatten)) void reduce_avx2(
    void* out,
    const void* const* in,
    int n,
    int64_t len,
    c10::ScalarType dtype,
    ReduceOp op) {
  reduce_any(out, in, n, len, dtype, op);
}

__attribute__((flatten)) void reduce_baseline(
    void* out,
    const void* const* in,
    int n,
    int64_t len,
    c10::ScalarType dtype,
    ReduceOp op) {
  reduce_any(out, in, n, len, dtype, op);
}

} // namespace

void reduce_buffers(
    void* out,
    const void* const* in,
    int n,
    int64_t len,
    c10::ScalarType dtype,
    ReduceOp op) {
  static const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  (avx2 ? reduce_avx2 : reduce_baseline)(out, in, n, len, dtype, op);
}

} // namespace torchtp::detail
