#pragma once

// Memory that a decode step would otherwise fault in page by page. A
// key/value cache grows by a few hundred bytes per sequence, head and
// layer each step, so generation touched a new 4 KiB page every few
// positions of every row: at batch 8, 69 page faults per GPT-2 step, and a
// fault costs ~10 us in the VMs measured (a tenth of a bfloat16 step's
// main thread). Allocated whole, zeroed at once, and on 2 MiB transparent
// huge pages where the kernel grants them (`madvise` mode), the same bytes
// take a few dozen faults in all.

#include <ATen/ATen.h>

namespace torchtp::detail {

/// A zeroed, contiguous tensor whose pages are all touched now. From 2 MiB
/// up it is its own mapping, advised MADV_HUGEPAGE and aligned to 2 MiB;
/// smaller ones are at::zeros. Raises c10::Error if the memory cannot be
/// mapped.
at::Tensor zeros_on_huge_pages(at::IntArrayRef sizes, at::ScalarType dtype);

} // namespace torchtp::detail
