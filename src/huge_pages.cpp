#include "detail/huge_pages.h"

#include <c10/util/Exception.h>

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

namespace torchtp::detail {

at::Tensor zeros_on_huge_pages(at::IntArrayRef sizes, at::ScalarType dtype) {
  constexpr size_t kHuge = size_t{2} << 20;
  int64_t numel = 1;
  for (const auto s : sizes) {
    TORCH_CHECK(s >= 0, "zeros_on_huge_pages: negative size in ", sizes);
    numel *= s;
  }
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (bytes < kHuge) {
    return at::zeros(sizes, at::TensorOptions().dtype(dtype));
  }
  // Rounded up to whole huge pages, plus one for the alignment: the kernel
  // only puts a huge page where a whole aligned 2 MiB lies in the mapping.
  const size_t length = (bytes + kHuge - 1) / kHuge * kHuge + kHuge;
  void* base = ::mmap(
      nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
      -1, 0);
  TORCH_CHECK(
      base != MAP_FAILED, "could not map ", length, " bytes for a ",
      sizes, " ", dtype, " tensor: ", std::strerror(errno));
  const auto start = (reinterpret_cast<uintptr_t>(base) + kHuge - 1) &
                     ~(uintptr_t{kHuge} - 1);
  char* data = reinterpret_cast<char*>(start);
  // Advice only: without transparent huge pages this is 4 KiB pages.
  ::madvise(data, length - (start - reinterpret_cast<uintptr_t>(base)),
            MADV_HUGEPAGE);
  // Anonymous memory reads as zeros; one write per 4 KiB page faults it
  // in now (one fault per huge page where granted).
  for (size_t i = 0; i < bytes; i += 4096) {
    data[i] = 0;
  }
  return at::from_blob(
      data, sizes, [base, length](void*) { ::munmap(base, length); },
      at::TensorOptions().dtype(dtype));
}

} // namespace torchtp::detail
