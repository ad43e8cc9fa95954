#include "checkpoint/atomic_directory.h"

#include <c10/util/Exception.h>

#include <cstdio>

#include <unistd.h>

namespace torchtp::detail {
namespace fs = std::filesystem;

namespace {

fs::path normalised(const std::string& dir) {
  auto p = fs::path(dir).lexically_normal();
  if (p.filename().empty()) {
    p = p.parent_path();
  }
  TORCH_CHECK(!p.empty(), "torchtp: empty checkpoint directory name");
  return p;
}

} // namespace

AtomicDirectory::AtomicDirectory(const std::string& dir)
    : path_(normalised(dir)),
      staging_(path_.string() + ".tmp"),
      old_(path_.string() + ".old") {}

void AtomicDirectory::begin() const {
  fs::remove_all(staging_);
  fs::create_directories(staging_);
}

void AtomicDirectory::commit() const {
  fsync_path(staging_);
  fs::remove_all(old_);
  if (fs::exists(path_)) {
    fs::rename(path_, old_);
  }
  fs::rename(staging_, path_);
  fsync_path(path_.parent_path().empty() ? fs::path(".") : path_.parent_path());
  fs::remove_all(old_);
}

fs::path AtomicDirectory::committed(const std::string& marker) const {
  if (!fs::exists(path_ / marker) && fs::exists(old_ / marker)) {
    return old_;
  }
  return path_;
}

void fsync_path(const fs::path& p) {
  FILE* f = std::fopen(p.c_str(), "r");
  if (f != nullptr) {
    ::fsync(fileno(f));
    std::fclose(f);
  }
}

} // namespace torchtp::detail
