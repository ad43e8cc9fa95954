#include "detail/norm_kernels.h"
#include "detail/bfloat16_bits.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace torchtp::detail {
namespace {

using element::store;
// The normalised value as the input's dtype holds it, before the weight.
using element::stored;
using element::widen;

// Elements below which a call stays on the calling thread.
constexpr int64_t kParallelElements = int64_t{1} << 15;

template <typename T>
void run(const T* x, const T* w, T* y, int64_t rows, int64_t n, float eps) {
  const int64_t grain =
      std::max<int64_t>(1, kParallelElements / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * n;
      // 16 independent partial sums (a loop the compiler vectorises
      // without reassociating), halved pairwise: one fixed order.
      constexpr int kLanes = 16;
      float part[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= n; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          const float v = widen(xr[i + l]);
          part[l] += v * v;
        }
      }
      for (int h = kLanes / 2; h > 0; h /= 2) {
        for (int l = 0; l < h; ++l) {
          part[l] += part[l + h];
        }
      }
      float sum = part[0];
      for (; i < n; ++i) {
        const float v = widen(xr[i]);
        sum += v * v;
      }
      const float scale =
          1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
      T* yr = y + r * n;
      for (int64_t j = 0; j < n; ++j) {
        store(widen(w[j]) * stored(widen(xr[j]) * scale, y), yr + j);
      }
    }
  });
}

} // namespace

void rms_norm_rows(
    const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps) {
  run(x, w, y, rows, n, eps);
}

void rms_norm_rows(
    const uint16_t* x,
    const uint16_t* w,
    uint16_t* y,
    int64_t rows,
    int64_t n,
    float eps) {
  run(x, w, y, rows, n, eps);
}

} // namespace torchtp::detail
