#include "detail/activation_kernels.h"
#include "detail/bfloat16_bits.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace torchtp::detail {
namespace {

// a(x) = 2u for GELU's tanh form: x * (kGeluA + kGeluB * x^2), kGeluA =
// 2 sqrt(2/pi) and kGeluB = kGeluA * 0.044715; then 0.5 x (1 + tanh(u)) =
// x / (1 + exp(-2u)).
constexpr float kGeluA = 1.5957691216057308f;
constexpr float kGeluB = 1.5957691216057308f * 0.044715f;

// Plain C++: the scalar exponential.
namespace generic {
constexpr int kLanes = 1;
void activate(ActivationKernel act, float* f, int64_t m) {
  for (int64_t i = 0; i < m; ++i) {
    const float x = f[i];
    const float a =
        act == ActivationKernel::silu ? x : x * (kGeluA + kGeluB * x * x);
    f[i] = x / (1.0f + std::exp(-a));
  }
}
} // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr int kLanes = 8;
// glibc's vector exponential (libmvec), as the attention kernel uses it.
extern "C" __m256 _ZGVdN8v_expf(__m256);
void activate(ActivationKernel act, float* f, int64_t m) {
  const __m256 a1 = _mm256_set1_ps(kGeluA), b1 = _mm256_set1_ps(kGeluB);
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  for (int64_t i = 0; i < m; i += kLanes) {
    const __m256 x = _mm256_loadu_ps(f + i);
    const __m256 a = act == ActivationKernel::silu
        ? x
        : _mm256_mul_ps(x, _mm256_fmadd_ps(b1, _mm256_mul_ps(x, x), a1));
    const __m256 e = _ZGVdN8v_expf(_mm256_sub_ps(zero, a));
    _mm256_storeu_ps(f + i, _mm256_div_ps(x, _mm256_add_ps(one, e)));
  }
}
} // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace avx512 {
constexpr int kLanes = 16;
extern "C" __m512 _ZGVeN16v_expf(__m512);
void activate(ActivationKernel act, float* f, int64_t m) {
  const __m512 a1 = _mm512_set1_ps(kGeluA), b1 = _mm512_set1_ps(kGeluB);
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < m; i += kLanes) {
    const __m512 x = _mm512_loadu_ps(f + i);
    const __m512 a = act == ActivationKernel::silu
        ? x
        : _mm512_mul_ps(x, _mm512_fmadd_ps(b1, _mm512_mul_ps(x, x), a1));
    const __m512 e = _ZGVeN16v_expf(_mm512_sub_ps(zero, a));
    _mm512_storeu_ps(f + i, _mm512_div_ps(x, _mm512_add_ps(one, e)));
  }
}
} // namespace avx512
#pragma GCC pop_options

// A row is staged kChunk float32 values at a time (a multiple of every
// set's lanes; the last chunk padded with zeros, so every element takes
// the vector instructions).
constexpr int64_t kChunk = 256;
// Elements below which a call stays on the calling thread (a decode step's
// MLP row: waking the pool would cost more than the row takes).
constexpr int64_t kParallelElements = int64_t{1} << 15;

inline void to_floats(const float* p, float* f, int64_t m) {
  std::memcpy(f, p, m * sizeof(float));
}
inline void to_floats(const uint16_t* p, float* f, int64_t m) {
  for (int64_t i = 0; i < m; ++i) {
    f[i] = from_bfloat16_bits(p[i]);
  }
}
inline void from_floats(const float* f, float* p, int64_t m) {
  std::memcpy(p, f, m * sizeof(float));
}
inline void from_floats(const float* f, uint16_t* p, int64_t m) {
  for (int64_t i = 0; i < m; ++i) {
    p[i] = to_bfloat16_bits(f[i]);
  }
}
// What the activation is rounded to before the gated product.
using element::stored;

template <typename T>
void run(
    Isa isa,
    ActivationKernel act,
    const T* x,
    const T* up,
    int64_t stride,
    T* y,
    int64_t rows,
    int64_t n) {
  TORCH_CHECK(
      cpu_supports(isa), "activation_rows: this CPU lacks ", isa_name(isa));
  const auto activate = isa == Isa::avx512 || isa == Isa::avx512_bf16
      ? &avx512::activate
      : isa == Isa::avx2 ? &avx2::activate
                         : &generic::activate;
  const int64_t lanes = isa == Isa::avx512 || isa == Isa::avx512_bf16
      ? avx512::kLanes
      : isa == Isa::avx2 ? avx2::kLanes
                         : generic::kLanes;
  const int64_t grain =
      std::max<int64_t>(1, kParallelElements / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    alignas(64) float f[kChunk], u[kChunk];
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c = 0; c < n; c += kChunk) {
        const int64_t m = std::min(kChunk, n - c);
        const int64_t padded = (m + lanes - 1) / lanes * lanes;
        to_floats(x + r * stride + c, f, m);
        std::fill(f + m, f + padded, 0.0f);
        activate(act, f, padded);
        if (up != nullptr) {
          to_floats(up + r * stride + c, u, m);
          for (int64_t i = 0; i < m; ++i) {
            f[i] = stored(f[i], y) * u[i];
          }
        }
        from_floats(f, y + r * n + c, m);
      }
    }
  });
}

} // namespace

void activation_rows(
    Isa isa,
    ActivationKernel act,
    const float* x,
    const float* up,
    int64_t stride,
    float* y,
    int64_t rows,
    int64_t n) {
  run(isa, act, x, up, stride, y, rows, n);
}

void activation_rows(
    Isa isa,
    ActivationKernel act,
    const uint16_t* x,
    const uint16_t* up,
    int64_t stride,
    uint16_t* y,
    int64_t rows,
    int64_t n) {
  run(isa, act, x, up, stride, y, rows, n);
}

} // namespace torchtp::detail
