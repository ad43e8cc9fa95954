#pragma once

// Hand-written products of a few activation rows with a bfloat16 or int8
// weight: decoding's linears, which read every weight once per step and so
// run at the speed memory delivers the weight's bytes. The weight is
// widened to float32 in registers as it streams through (bfloat16 by a
// shift, int8 by a sign extension and a per-row scale), so its traffic
// stays half or a quarter of float32's on every CPU, with or without
// native bfloat16 instructions. Compiled without LibTorch's headers; the
// instruction set is chosen at run time (one binary for every machine).

#include <cstdint>
#include <string>

namespace torchtp::detail {

/// The instruction sets the kernels are written for. `avx512_bf16` is
/// `avx512` plus dot products of bfloat16 pairs, for bfloat16 weights
/// times bfloat16 activations (int8 weights and float32 activations take
/// the `avx512` kernels there).
enum class Isa { generic, avx2, avx512, avx512_bf16 };

const char* isa_name(Isa isa);

/// Whether this CPU can run `isa` (from cpuid, as GCC's
/// __builtin_cpu_supports reads it).
bool cpu_supports(Isa isa);

/// Native bfloat16 arithmetic (avx512_bf16 or AMX): the CPUs where
/// oneDNN's bfloat16 GEMM is faster than widening to float32.
bool cpu_has_native_bfloat16();

/// The flags above that this CPU has, for benchmark headers and errors:
/// e.g. "avx2 fma avx512f avx512bw avx512_bf16".
std::string cpu_kernel_flags();

/// How torchtp multiplies reduced-precision and int8 weights. Read once
/// from the environment (TORCHTP_KERNELS, TORCHTP_BF16_GEMM) and
/// replaceable by tests.
struct KernelChoice {
  /// Hand kernels for few rows, in this instruction set; `library` off:
  /// every product goes to LibTorch (bfloat16 as stored; int8 widened to
  /// float32 tiles first).
  Isa isa = Isa::generic;
  bool hand_kernels = true;
  /// Products of many rows (prefill, training) with a bfloat16 weight:
  /// LibTorch's bfloat16 GEMM (oneDNN) when true, else float32 tiles of
  /// the weight through sgemm.
  bool native_bfloat16_gemm = false;
};

/// The current choice: the best this CPU has unless TORCHTP_KERNELS
/// (`avx512_bf16`, `avx512`, `avx2`, `generic` or `library`) or TORCHTP_BF16_GEMM
/// (`native` or `float32`) say otherwise. An instruction set the CPU lacks
/// is refused with the CPU's flags named.
const KernelChoice& kernel_choice();

/// Replaces the choice (tests run every path on one machine); returns the
/// previous one. Not thread-safe against running products.
KernelChoice set_kernel_choice(const KernelChoice& choice);

/// The weight's storage.
enum class WeightType { bfloat16, int8, float32 };

/// y[r, j] = sum_i x[r, i] * w[j, i] * (scale ? scale[j] : 1) + (bias ?
/// bias[j] : 0) for r < rows, j < n: x float32 [rows, k] (row stride k), w
/// [n, k] row-major bfloat16 bits, int8 or float32, scale and bias float32
/// [n] or null, y float32 [rows, n] (row stride n). Accumulates in float32,
/// each output in the same order whatever `rows` is. Splits the n outputs
/// over LibTorch's intra-op threads.
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
    int64_t n);

/// small_rows_gemm for a bfloat16 weight and bfloat16 activations `x`
/// (bits, [rows, k]), no scale: Isa::avx512_bf16's dot products, which read
/// both as stored. Raises where the CPU lacks avx512_bf16.
void small_rows_gemm_bfloat16(
    const uint16_t* x,
    int64_t rows,
    int64_t k,
    const uint16_t* w,
    const float* bias,
    float* y,
    int64_t n);

} // namespace torchtp::detail
