// The OpenBLAS kernel rule of torchtp-run and init (detail/blas_core.h).

#include <torchtp/detail/blas_core.h>

#include <gtest/gtest.h>

#include <string>
#include <vector>

TEST(BlasCore, GenericKernelsOnAnAvx512CpuGetSkylakeX) {
  using torchtp::detail::better_blas_core;
  const std::vector<std::string> avx512 = {
      "sse2", "avx2", "fma", "avx512f", "avx512bw", "avx512vl"};
  EXPECT_EQ(better_blas_core("Prescott", avx512), "SkylakeX");
  EXPECT_EQ(better_blas_core("Nehalem", {"sse2", "avx2", "fma"}), "Haswell");
  // OpenBLAS's own choice stands when it recognised the CPU...
  EXPECT_EQ(better_blas_core("Zen", avx512), "");
  EXPECT_EQ(better_blas_core("SkylakeX", avx512), "");
  // ... and a CPU without AVX2 has nothing better than the generic kernels.
  EXPECT_EQ(better_blas_core("Prescott", {"sse2", "sse3"}), "");
  EXPECT_EQ(better_blas_core("", avx512), "");
}
