// main() of every distributed test: joins the job from the launcher's
// environment (world size 1 when run alone), then runs the tests on every
// rank. Rank 0 prints the usual report; the others print only failures, so
// the log stays readable at four ranks.

#include <torchtp/torchtp.h>

#include <gtest/gtest.h>

#include <iostream>

namespace {

class FailuresOnly : public ::testing::EmptyTestEventListener {
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed()) {
      std::cout << r.file_name() << ":" << r.line_number() << ": Failure\n"
                << r.summary() << std::endl;
    }
  }
};

} // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  torchtp::Group world = torchtp::init_from_env();
  if (world.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailuresOnly);
  }
  const int failed = RUN_ALL_TESTS();
  // A rank that finished must not leave while others still talk to it.
  world.barrier();
  return failed;
}
