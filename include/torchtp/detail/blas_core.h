#pragma once

// Which OpenBLAS kernels a CPU should get. Debian 12's OpenBLAS 0.3.21 does
// not recognise some newer CPUs (Intel Xeon VMs with AVX-512 among them) and
// falls back to its SSE3 "Prescott" kernels: sgemm runs 2-3x slower than
// with the SkylakeX or Haswell kernels the CPU can run. OPENBLAS_CORETYPE,
// read when OpenBLAS loads, selects the right ones. Used by torchtp-run (for
// the ranks it starts) and by init (a warning for programs started
// otherwise). Header-only and torch-free: the launcher links no libtorch.

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace torchtp::detail {

/// The flags of the first processor in /proc/cpuinfo ("avx2", "avx512f").
inline std::vector<std::string> cpu_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) == 0) {
      std::istringstream words(line.substr(line.find(':') + 1));
      std::vector<std::string> flags;
      std::string f;
      while (words >> f) {
        flags.push_back(f);
      }
      return flags;
    }
  }
  return {};
}

/// The OPENBLAS_CORETYPE to set when OpenBLAS chose `core` (its
/// openblas_get_corename()) on a CPU with `flags`; empty when its choice
/// is right, or nothing better runs there.
inline std::string better_blas_core(
    std::string core, const std::vector<std::string>& flags) {
  std::transform(core.begin(), core.end(), core.begin(), [](unsigned char c) {
    return static_cast<char>(std::tolower(c));
  });
  // OpenBLAS's generic x86-64 fallbacks: SSE2/SSE3 kernels only.
  const bool generic = core == "prescott" || core == "core2" ||
                       core == "penryn" || core == "dunnington" ||
                       core == "nehalem" || core == "athlon" ||
                       core == "opteron" || core == "barcelona";
  if (!generic) {
    return "";
  }
  auto has = [&](const char* f) {
    return std::find(flags.begin(), flags.end(), f) != flags.end();
  };
  if (has("avx512f") && has("avx512bw") && has("avx512vl")) {
    return "SkylakeX";
  }
  if (has("avx2") && has("fma")) {
    return "Haswell";
  }
  return "";
}

/// The kernel set the OpenBLAS that libtorch uses picks on this machine
/// (loading it if this process has not), or "" when the BLAS is not
/// OpenBLAS.
inline std::string openblas_core() {
  using Fn = char* (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (fn == nullptr) {
    // libtorch links the BLAS through the alternatives' libblas.so.3.
    for (const char* lib : {"libblas.so.3", "libopenblas.so.0"}) {
      if (void* h = dlopen(lib, RTLD_LAZY | RTLD_LOCAL)) {
        fn = reinterpret_cast<Fn>(dlsym(h, "openblas_get_corename"));
        if (fn != nullptr) {
          break;
        }
      }
    }
  }
  return fn ? std::string(fn()) : std::string();
}

} // namespace torchtp::detail
