// A rank that dies or stalls: the surviving ranks get a c10::Error naming
// their rank within the timeout, never a hang or a crash.
//
//   torchtp-run --nproc-per-node N test_failures dies|stalls
// The last rank misbehaves; every other rank checks what its collective
// raised and exits 0 when it is the expected error.

#include <torchtp/torchtp.h>

#include <torch/torch.h>

#include <unistd.h>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "dies" && mode != "stalls") {
    std::cerr << "usage: test_failures dies|stalls\n";
    return 2;
  }
  torchtp::Group world = torchtp::init_from_env();
  const int victim = world.size() - 1;
  if (world.size() == 1) {
    std::cerr << "test_failures needs at least two ranks\n";
    return 2;
  }
  world.barrier(); // everyone is connected

  if (world.rank() == victim) {
    if (mode == "dies") {
      _exit(0); // vanish without a word, as a crash would (exit 0 so the
                // launcher lets the others report)
    }
    // Stall well past the others' timeout, then leave quietly.
    std::this_thread::sleep_for(std::chrono::seconds(8));
    _exit(0);
  }

  const auto start = std::chrono::steady_clock::now();
  auto t = torch::ones({1024});
  try {
    for (int i = 0; i < 100; ++i) {
      world.all_reduce(t);
    }
    std::cerr << "FAIL: all_reduce succeeded without rank " << victim << "\n";
    return 1;
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    const bool names_rank = msg.find(world.rank_label()) != std::string::npos;
    std::cout << "rank " << world.rank() << " got after " << s
              << " s: " << msg.substr(0, 300) << "\n";
    if (!names_rank) {
      std::cerr << "FAIL: the message does not name " << world.rank_label() << "\n";
      return 1;
    }
    if (world.rank() == 0) {
      std::cout << "1 passed, 0 failed\n";
    }
    // Leave without the destructors: the group is broken by design.
    std::cout.flush();
    _exit(0);
  }
}
