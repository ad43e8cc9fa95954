#pragma once

// bfloat16 as its 16 bits, for code compiled without LibTorch's headers
// (the reduction kernels, the weight kernels): plain functions the
// compiler inlines and vectorises.

#include <cstdint>
#include <cstring>

namespace torchtp::detail {

/// Round to nearest even, as c10::BFloat16(float), without its branch: a
/// loop over these vectorises.
inline uint16_t to_bfloat16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint16_t rounded =
      static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return f != f ? uint16_t{0x7FC0} : rounded;
}

inline float from_bfloat16_bits(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

/// One element of a float32 or bfloat16 (its bits) array, for kernel bodies
/// written once for both: read as float, written back rounded, and a float
/// value as such an array would hold it (the pointer picks the type).
namespace element {
inline float widen(float f) {
  return f;
}
inline float widen(uint16_t b) {
  return from_bfloat16_bits(b);
}
inline void store(float v, float* p) {
  *p = v;
}
inline void store(float v, uint16_t* p) {
  *p = to_bfloat16_bits(v);
}
inline float stored(float v, const float*) {
  return v;
}
inline float stored(float v, const uint16_t*) {
  return from_bfloat16_bits(to_bfloat16_bits(v));
}
} // namespace element

} // namespace torchtp::detail
