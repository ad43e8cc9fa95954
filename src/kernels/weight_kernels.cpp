#include "detail/weight_kernels.h"
#include "detail/bfloat16_bits.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>

namespace torchtp::detail {
namespace {

using element::widen; // float32 and bfloat16 bits
inline float widen(int8_t q) {
  return static_cast<float>(q);
}

// Plain C++: what any x86-64 (or other) CPU runs. Eight lanes of scalars
// the compiler may vectorise with the baseline instruction set.
namespace generic {
constexpr int kLanes = 8;
constexpr int kMaxM = 4;
using X = float;
struct V {
  float v[kLanes];
};
using WV = V;
using XV = V;
inline V vzero() {
  return V{};
}
inline V vloadx(const float* p) {
  V r;
  for (int i = 0; i < kLanes; ++i) {
    r.v[i] = p[i];
  }
  return r;
}
template <typename W>
inline V vloadw(const W* p) {
  V r;
  for (int i = 0; i < kLanes; ++i) {
    r.v[i] = widen(p[i]);
  }
  return r;
}
inline V vfma(const V& a, const V& b, V c) {
  for (int i = 0; i < kLanes; ++i) {
    c.v[i] += a.v[i] * b.v[i];
  }
  return c;
}
inline float vsum(const V& a) {
  float s = 0;
  for (int i = 0; i < kLanes; ++i) {
    s += a.v[i];
  }
  return s;
}
#include "small_rows_gemm.inc"
} // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr int kLanes = 8;
constexpr int kMaxM = 2; // 16 ymm registers: 4 x 2 accumulators
using X = float;
using V = __m256;
using WV = V;
using XV = V;
inline V vzero() {
  return _mm256_setzero_ps();
}
inline V vloadx(const float* p) {
  return _mm256_loadu_ps(p);
}
inline V vloadw(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline V vloadw(const int8_t* p) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}
inline V vloadw(const float* p) {
  return _mm256_loadu_ps(p);
}
inline V vfma(V a, V b, V c) {
  return _mm256_fmadd_ps(a, b, c);
}
inline float vsum(V a) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}
#include "small_rows_gemm.inc"
} // namespace avx2
#pragma GCC pop_options

// GCC 12's AVX-512 headers leave "undefined" registers self-initialised
// (`__m512i __Y = __Y;`), which -Wmaybe-uninitialized reports.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace avx512 {
constexpr int kLanes = 16;
constexpr int kMaxM = 4; // 32 zmm registers: 4 x 4 accumulators
using X = float;
using V = __m512;
using WV = V;
using XV = V;
inline V vzero() {
  return _mm512_setzero_ps();
}
inline V vloadx(const float* p) {
  return _mm512_loadu_ps(p);
}
inline V vloadw(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline V vloadw(const int8_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}
inline V vloadw(const float* p) {
  return _mm512_loadu_ps(p);
}
inline V vfma(V a, V b, V c) {
  return _mm512_fmadd_ps(a, b, c);
}
inline float vsum(V a) {
  return _mm512_reduce_add_ps(a);
}
#include "small_rows_gemm.inc"
} // namespace avx512
#pragma GCC pop_options

// bfloat16 weights times bfloat16 activations with avx512_bf16's dot
// products: each instruction multiplies 32 stored pairs and adds them to
// 16 float32 sums, with no widening (a quarter of the instructions per
// weight of the avx512 kernels, which is what two threads sharing a
// core's execution units need to keep up with memory).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")
namespace avx512_bf16 {
constexpr int kLanes = 32;
constexpr int kMaxM = 4;
using X = uint16_t;
using V = __m512;
using WV = __m512bh;
using XV = __m512bh;
inline V vzero() {
  return _mm512_setzero_ps();
}
inline __m512bh vloadx(const uint16_t* p) {
  return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p));
}
inline __m512bh vloadw(const uint16_t* p) {
  return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p));
}
inline V vfma(__m512bh w, __m512bh x, V acc) {
  return _mm512_dpbf16_ps(acc, w, x);
}
inline float vsum(V a) {
  return _mm512_reduce_add_ps(a);
}
#include "small_rows_gemm.inc"
} // namespace avx512_bf16
#pragma GCC pop_options
#pragma GCC diagnostic pop

bool has(const char* feature) {
  // __builtin_cpu_supports takes only literals; the names used here.
  if (std::strcmp(feature, "avx2") == 0) {
    return __builtin_cpu_supports("avx2");
  }
  if (std::strcmp(feature, "fma") == 0) {
    return __builtin_cpu_supports("fma");
  }
  if (std::strcmp(feature, "avx512f") == 0) {
    return __builtin_cpu_supports("avx512f");
  }
  if (std::strcmp(feature, "avx512bw") == 0) {
    return __builtin_cpu_supports("avx512bw");
  }
  if (std::strcmp(feature, "avx512vl") == 0) {
    return __builtin_cpu_supports("avx512vl");
  }
  if (std::strcmp(feature, "avx512dq") == 0) {
    return __builtin_cpu_supports("avx512dq");
  }
  if (std::strcmp(feature, "avx512_bf16") == 0) {
    return __builtin_cpu_supports("avx512bf16");
  }
  if (std::strcmp(feature, "avx512_vnni") == 0) {
    return __builtin_cpu_supports("avx512vnni");
  }
  return false;
}

// AMX is not in GCC 12's __builtin_cpu_supports: cpuid leaf 7, EDX bit 22
// (amx_bf16).
bool has_amx_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
  return (d >> 22) & 1u;
}

Isa best_isa() {
  if (cpu_supports(Isa::avx512_bf16)) {
    return Isa::avx512_bf16;
  }
  if (cpu_supports(Isa::avx512)) {
    return Isa::avx512;
  }
  return cpu_supports(Isa::avx2) ? Isa::avx2 : Isa::generic;
}

KernelChoice choice_from_environment() {
  KernelChoice c;
  c.isa = best_isa();
  c.native_bfloat16_gemm = cpu_has_native_bfloat16();
  if (const char* e = std::getenv("TORCHTP_KERNELS"); e != nullptr && *e) {
    const std::string v(e);
    if (v == "library") {
      c.hand_kernels = false;
    } else {
      const Isa wanted = v == "avx512_bf16" ? Isa::avx512_bf16
                         : v == "avx512"    ? Isa::avx512
                         : v == "avx2"      ? Isa::avx2
                                            : Isa::generic;
      TORCH_CHECK(
          v == "avx512_bf16" || v == "avx512" || v == "avx2" ||
              v == "generic",
          "TORCHTP_KERNELS is '", v,
          "'; expected avx512_bf16, avx512, avx2, generic or library");
      TORCH_CHECK(
          cpu_supports(wanted), "TORCHTP_KERNELS=", v,
          ": this CPU lacks it (it has: ", cpu_kernel_flags(), ")");
      c.isa = wanted;
    }
  }
  if (const char* e = std::getenv("TORCHTP_BF16_GEMM"); e != nullptr && *e) {
    const std::string v(e);
    TORCH_CHECK(
        v == "native" || v == "float32", "TORCHTP_BF16_GEMM is '", v,
        "'; expected native or float32");
    c.native_bfloat16_gemm = v == "native";
  }
  return c;
}

KernelChoice& current() {
  static KernelChoice choice = choice_from_environment();
  return choice;
}

} // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::generic:
      return "generic";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
    case Isa::avx512_bf16:
      return "avx512_bf16";
  }
  return "?";
}

namespace {

bool read_cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::generic:
      return true;
    case Isa::avx2:
      return has("avx2") && has("fma");
    case Isa::avx512:
      return has("avx512f") && has("avx512bw") && has("avx512vl") &&
             has("avx512dq") && has("fma");
    case Isa::avx512_bf16:
      return read_cpu_supports(Isa::avx512) && has("avx512_bf16");
  }
  return false;
}

} // namespace

bool cpu_supports(Isa isa) {
  // Read once: small_rows_gemm asks on every product.
  static const bool supported[] = {
      read_cpu_supports(Isa::generic), read_cpu_supports(Isa::avx2),
      read_cpu_supports(Isa::avx512), read_cpu_supports(Isa::avx512_bf16)};
  return supported[static_cast<int>(isa)];
}

bool cpu_has_native_bfloat16() {
  return has("avx512_bf16") || has_amx_bf16();
}

std::string cpu_kernel_flags() {
  std::string out;
  for (const char* f : {"avx2", "fma", "avx512f", "avx512bw", "avx512_bf16",
                        "avx512_vnni"}) {
    if (has(f)) {
      out += out.empty() ? "" : " ";
      out += f;
    }
  }
  if (has_amx_bf16()) {
    out += out.empty() ? "amx_bf16" : " amx_bf16";
  }
  return out.empty() ? "none of avx2, avx512" : out;
}

const KernelChoice& kernel_choice() {
  return current();
}

KernelChoice set_kernel_choice(const KernelChoice& choice) {
  TORCH_CHECK(
      cpu_supports(choice.isa), "torchtp kernels: this CPU cannot run ",
      isa_name(choice.isa), " (it has: ", cpu_kernel_flags(), ")");
  const KernelChoice previous = current();
  current() = choice;
  return previous;
}

namespace {

// Calls f(j0, j1) for blocks [j0, j1) of `grain` output rows, over
// LibTorch's intra-op threads. Each thread has an equal share of the
// blocks and takes them from the front; once done it takes what is left
// of the others' shares from their backs. With a static split the main
// thread waited at the region's end for ~16% of a decode step (perf,
// Qwen2.5-0.5B int8, batch 1, AMD EPYC Zen 5, two threads): the other
// thread ran its equal share slower. Which thread computes a block does not
// change its numbers.
template <typename F>
void for_each_block_balanced(int64_t n, int64_t grain, const F& f) {
  const int64_t blocks = (n + grain - 1) / grain;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), blocks);
  if (threads <= 1 || at::in_parallel_region()) {
    f(0, n);
    return;
  }
  // One cache line per share: its owner's claims do not move the others'.
  struct alignas(64) Share {
    std::atomic<int64_t> claimed{0}; // blocks handed out, from either end
    std::atomic<int64_t> from_back{0};
  };
  const auto shares = std::make_unique<Share[]>(threads);
  auto first = [&](int64_t t) { return t * blocks / threads; };
  auto compute = [&](int64_t b) {
    f(b * grain, std::min(n, (b + 1) * grain));
  };
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t begin = first(t), size = first(t + 1) - begin;
      for (int64_t front = 0; shares[t].claimed.fetch_add(1) < size; ++front) {
        compute(begin + front);
      }
      for (int64_t o = 1; o < threads; ++o) {
        const int64_t s = (t + o) % threads;
        const int64_t end = first(s + 1), size_s = end - first(s);
        while (shares[s].claimed.fetch_add(1) < size_s) {
          compute(end - 1 - shares[s].from_back.fetch_add(1));
        }
      }
    }
  });
}

} // namespace

void small_rows_gemm(
    Isa isa,
    const float* x,
    int64_t rows,
    int64_t k,
    const void* w,
    WeightType type,
    const float* scale,
    const float* bias,
    float* y,
    int64_t n) {
  TORCH_CHECK(cpu_supports(isa), "small_rows_gemm: CPU lacks ", isa_name(isa));
  auto pick = [&](auto* typed) {
    using W = std::remove_const_t<std::remove_pointer_t<decltype(typed)>>;
    // avx512_bf16 with float activations: the avx512 kernels.
    return isa == Isa::avx512 || isa == Isa::avx512_bf16 ? &avx512::run<W>
           : isa == Isa::avx2                           ? &avx2::run<W>
                                                        : &generic::run<W>;
  };
  auto go = [&](auto* typed) {
    const auto run = pick(typed);
    // Many rows (an int8 prefill, batch-invariant products) go kRowSlice at
    // a time, so that a slice's activations stay in L2 while the weight
    // streams past them; each output's sum is the same in any slice.
    constexpr int64_t kRowSlice = 16;
    for (int64_t r0 = 0; r0 < rows; r0 += kRowSlice) {
      const int64_t m = std::min(kRowSlice, rows - r0);
      // Blocks of 64 output rows per task: 8 register blocks, and for
      // GPT-2's 768-row layers 12 tasks over the threads.
      constexpr int64_t kGrain = 64;
      for_each_block_balanced(n, kGrain, [&](int64_t n0, int64_t n1) {
        run(x + r0 * k, m, k, typed, scale, bias, y + r0 * n, n, n0, n1);
      });
    }
  };
  switch (type) {
    case WeightType::bfloat16:
      go(static_cast<const uint16_t*>(w));
      break;
    case WeightType::int8:
      go(static_cast<const int8_t*>(w));
      break;
    case WeightType::float32:
      go(static_cast<const float*>(w));
      break;
  }
}

void small_rows_gemm_bfloat16(
    const uint16_t* x,
    int64_t rows,
    int64_t k,
    const uint16_t* w,
    const float* bias,
    float* y,
    int64_t n) {
  TORCH_CHECK(
      cpu_supports(Isa::avx512_bf16),
      "small_rows_gemm_bfloat16: this CPU lacks avx512_bf16 (it has: ",
      cpu_kernel_flags(), ")");
  constexpr int64_t kGrain = 64; // as small_rows_gemm
  for_each_block_balanced(n, kGrain, [&](int64_t n0, int64_t n1) {
    avx512_bf16::run(x, rows, k, w, nullptr, bias, y, n, n0, n1);
  });
}

} // namespace torchtp::detail
