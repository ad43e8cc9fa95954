#include "detail/rotary_kernels.h"
#include "detail/bfloat16_bits.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace torchtp::detail {
namespace {

using element::store;
// A float value rounded to T, as T's tensors would hold it.
using element::stored;
using element::widen;

// Positions below which a call stays on the calling thread (a decode
// step's few; a prefill's hundreds spread).
constexpr int64_t kParallelPositions = 16;

} // namespace

template <typename T>
void rotary_rows(
    const T* x,
    const int64_t* positions,
    const double* inv_freq,
    T* y,
    const RotaryShape& s) {
  const int64_t half = s.head_dim / 2;
  const int64_t per_sequence = s.positions_per_sequence ? s.seq : 0;
  const int64_t tasks = s.batch * s.seq;
  const int64_t grain = tasks < kParallelPositions ? tasks : 1;
  at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> cos_sin(2 * half);
    float* c = cos_sin.data();
    float* sn = c + half;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / s.seq, p = t % s.seq;
      const double position =
          static_cast<double>(positions[b * per_sequence + p]);
      for (int64_t i = 0; i < half; ++i) {
        const double angle = position * inv_freq[i];
        // float64 -> float -> T, as LibTorch's casts round.
        c[i] = stored(static_cast<float>(std::cos(angle)), y);
        sn[i] = stored(static_cast<float>(std::sin(angle)), y);
      }
      for (int64_t h = 0; h < s.heads; ++h) {
        const T* xr =
            x + b * s.x_stride_batch + h * s.x_stride_head + p * s.x_stride_seq;
        T* yr =
            y + b * s.y_stride_batch + h * s.y_stride_head + p * s.y_stride_seq;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = widen(xr[i]), x2 = widen(xr[i + half]);
          // Each product rounded to T, then the sum (no fused multiply-add:
          // this file is compiled with -ffp-contract=off).
          store(stored(x1 * c[i], y) + stored(-x2 * sn[i], y), yr + i);
          store(stored(x2 * c[i], y) + stored(x1 * sn[i], y), yr + i + half);
        }
      }
    }
  });
}

template void rotary_rows<float>(
    const float*, const int64_t*, const double*, float*, const RotaryShape&);
template void rotary_rows<uint16_t>(
    const uint16_t*,
    const int64_t*,
    const double*,
    uint16_t*,
    const RotaryShape&);

} // namespace torchtp::detail
