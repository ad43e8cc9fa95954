#pragma once

// Helpers shared by the distributed tests: every rank builds the same full
// (unsharded) reference from the same seed and compares its own slice.
// The references themselves, and the slicing helpers, are in reference.h.

#include "detail/shard_init.h"

#include <torchtp/torchtp.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>

namespace torchtp::testing {

/// The world group set up by the tests' main().
inline Group world() {
  return default_group();
}

/// A new directory under /tmp that every rank agrees on: rank 0 makes it
/// and broadcasts its name. The caller removes it.
inline std::string shared_tmpdir(const std::string& what) {
  auto g = world();
  auto buf = torch::zeros({256}, torch::kByte);
  if (g.rank() == 0) {
    std::string name = "/tmp/torchtp-" + what + "-XXXXXX";
    TORCH_CHECK(name.size() < 255 && mkdtemp(name.data()) != nullptr,
                "mkdtemp failed for ", name);
    std::memcpy(buf.data_ptr(), name.data(), name.size());
  }
  g.broadcast(buf, 0);
  return std::string(reinterpret_cast<const char*>(buf.data_ptr()));
}

/// Tolerances for comparing a sharded result with the unsharded one: the
/// reduction order differs, so results agree to rounding, not bit for bit.
struct Tolerance {
  double rtol;
  double atol;
};

inline Tolerance tolerance_for(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kDouble:
      return {1e-10, 1e-12};
    case torch::kBFloat16:
      return {3e-2, 3e-2};
    default:
      return {1e-4, 1e-5};
  }
}

/// gtest assertion: `actual` equals `expected` in shape and, within the
/// dtype's tolerance, in value. Reports the largest difference and the rank.
inline ::testing::AssertionResult all_close(
    const torch::Tensor& actual, const torch::Tensor& expected, Tolerance tol) {
  const std::string tag = world().rank_label();
  if (!actual.defined() || !expected.defined()) {
    return ::testing::AssertionFailure()
           << "undefined tensor (actual " << actual.defined() << ", expected "
           << expected.defined() << ") " << tag;
  }
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure()
           << "shape " << actual.sizes() << " != expected " << expected.sizes()
           << " " << tag;
  }
  auto a = actual.to(torch::kDouble);
  auto e = expected.to(torch::kDouble);
  if (!torch::allclose(a, e, tol.rtol, tol.atol)) {
    return ::testing::AssertionFailure()
           << "max |diff| " << (a - e).abs().max().item<double>() << " (rtol "
           << tol.rtol << ", atol " << tol.atol << ") " << tag;
  }
  return ::testing::AssertionSuccess();
}

inline ::testing::AssertionResult all_close(
    const torch::Tensor& actual, const torch::Tensor& expected) {
  return all_close(actual, expected, tolerance_for(expected.scalar_type()));
}

/// Runs `f`, expects a c10::Error whose message contains every string in
/// `needles`.
template <typename F>
::testing::AssertionResult raises_with(
    F&& f, std::initializer_list<std::string> needles) {
  try {
    f();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    for (const auto& n : needles) {
      if (msg.find(n) == std::string::npos) {
        return ::testing::AssertionFailure()
               << "message lacks '" << n << "': " << msg;
      }
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure()
           << "raised a non-c10::Error: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not raise";
}

/// A fixture with a directory every rank shares (`dir_`, removed after
/// the test), for tests that write files on rank 0 and read them on all.
class SharedDirTest : public ::testing::Test {
 protected:
  explicit SharedDirTest(std::string what) : what_(std::move(what)) {}
  void SetUp() override {
    dir_ = shared_tmpdir(what_);
  }
  void TearDown() override {
    world().barrier();
    if (world().rank() == 0) {
      std::filesystem::remove_all(dir_);
    }
  }
  /// Runs `write` on rank 0 once every rank is done with the files (so a
  /// rank still reading never sees them change), then every rank continues.
  template <typename F>
  void on_rank0(F&& write) {
    world().barrier();
    if (world().rank() == 0) {
      write();
    }
    world().barrier();
  }
  std::string dir_;

 private:
  std::string what_;
};

} // namespace torchtp::testing
