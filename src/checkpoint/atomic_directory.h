#pragma once

// A directory replaced whole or not at all: written under a temporary
// sibling name, then swapped in with two renames.

#include <filesystem>
#include <string>

namespace torchtp::detail {

/// DIR, with its two siblings: DIR.tmp, where the new contents are written,
/// and DIR.old, the replaced directory while the swap runs. A crash leaves
/// DIR whole, or (between the two renames) only DIR.old, which
/// `committed()` finds.
class AtomicDirectory {
 public:
  /// "ckpt/" and "ckpt" name the same directory: the siblings are
  /// "ckpt.tmp" and "ckpt.old", never children of it.
  explicit AtomicDirectory(const std::string& dir);

  const std::filesystem::path& path() const {
    return path_;
  }
  /// Where the new contents are written before `commit()`.
  const std::filesystem::path& staging() const {
    return staging_;
  }

  /// Makes `staging()` an empty directory (a crashed earlier write may have
  /// left one).
  void begin() const;
  /// Flushes `staging()` and swaps it in for `path()`: the old directory
  /// stays whole until the new one is in place, then is removed. The files
  /// in `staging()` must be flushed already (`fsync_path`).
  void commit() const;
  /// The directory to read: `path()`, or DIR.old when `path()` has no
  /// `marker` file and DIR.old has (a crash between the two renames).
  std::filesystem::path committed(const std::string& marker) const;

 private:
  std::filesystem::path path_;
  std::filesystem::path staging_;
  std::filesystem::path old_;
};

/// Flushes the file or directory `p` to disk (best effort: a path that
/// cannot be opened is skipped).
void fsync_path(const std::filesystem::path& p);

} // namespace torchtp::detail
