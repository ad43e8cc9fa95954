#include "reduce_kernels.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <type_traits>

namespace torchtp::detail {

template <typename T>
using accumulate_t = std::conditional_t<
    std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>,
    float,
    T>;

// Works through tiles that stay in L1: each input is read once, the output
// written once, and the inner loops vectorise.
template <typename T, typename Combine>
__attribute__((always_inline)) inline void reduce_tiles(
    T* out, const T* const* in, int n, int64_t len, Combine combine) {
  using Acc = accumulate_t<T>;
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
      acc[i] = static_cast<Acc>(first[i]);
    }
    for (int k = 1; k < n; ++k) {
      const T* next = in[k] + start;
      for (int64_t i = 0; i < m; ++i) {
        acc[i] = combine(acc[i], static_cast<Acc>(next[i]));
      }
    }
    T* o = out + start;
    for (int64_t i = 0; i < m; ++i) {
      o[i] = static_cast<T>(acc[i]);
    }
  }
}

// Compiled for AVX2 as well as the baseline; the loader picks the clone the
// CPU runs (Debian builds for plain x86-64, whose SSE2 halves the speed).
__attribute__((target_clones("avx2", "default"))) void reduce_buffers(
    void* out,
    const void* const* in,
    int n,
    int64_t len,
    c10::ScalarType dtype,
    ReduceOp op) {
  AT_DISPATCH_ALL_TYPES_AND2(
      c10::kBFloat16, c10::kHalf, dtype, "torchtp_reduce_buffers", [&] {
        using Acc = accumulate_t<scalar_t>;
        auto* o = static_cast<scalar_t*>(out);
        auto i = reinterpret_cast<const scalar_t* const*>(in);
        switch (op) {
          case ReduceOp::sum:
            reduce_tiles(o, i, n, len, [](Acc a, Acc b) {
              return static_cast<Acc>(a + b);
            });
            break;
          case ReduceOp::max:
            reduce_tiles(o, i, n, len, [](Acc a, Acc b) {
              return (b > a || b != b) ? b : a;
            });
            break;
          case ReduceOp::min:
            reduce_tiles(o, i, n, len, [](Acc a, Acc b) {
              return (b < a || b != b) ? b : a;
            });
            break;
        }
      });
}

} // namespace torchtp::detail
