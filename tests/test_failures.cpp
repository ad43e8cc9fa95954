// What the ranks of a job see when one of them fails, never a hang or a
// crash:
//
//   torchtp-run --nproc-per-node N test_failures MODE
//   dies       the last rank vanishes (_exit); the others' collective
//              raises a c10::Error naming their rank within the timeout
//   stalls     the last rank sleeps past the others' timeout; likewise
//   bad_input  the last rank alone gives a RowParallelLinear a wrong input
//              width; it catches the c10::Error and calls
//              torchtp::report_failure, as a user's main does. Every other
//              rank's forward must raise a c10::Error that names the last
//              rank and quotes its message, in seconds (not at the timeout)
//   uncaught   the same, but the error escapes the last rank's main
//              (std::terminate): init_from_env's terminate hook reports it
//              (bad_input and uncaught take the failing rank as a second
//              argument; default the last)
//   mismatch   rank 0 all-reduces 4 floats, the others 5 (no TORCHTP_DEBUG):
//              every rank must raise a c10::Error naming both sizes, no
//              abort, and the group must still work afterwards
//   order      (run with TORCHTP_DEBUG=1) rank 0 all-reduces then
//              all-gathers, the others the other way round: every rank must
//              raise a c10::Error naming what each rank called at which
//              sequence number, no hang, and the group must still work
//
// A rank that sees what it should prints "OK" and exits 0; in bad_input and
// uncaught the last rank exits 1 or aborts, as a failing rank does.

#include <torchtp/torchtp.h>

#include <torch/torch.h>

#include <unistd.h>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Prints the verdict of one rank and returns its exit code.
int verdict(
    const torchtp::Group& world,
    bool ok,
    double s,
    const std::string& msg,
    const std::string& expected) {
  std::cout << "rank " << world.rank() << (ok ? " OK" : " FAIL") << " after "
            << s << " s: " << msg.substr(0, 400) << "\n";
  if (!ok) {
    std::cout << "expected the message to contain: " << expected << "\n";
  }
  std::cout.flush();
  return ok ? 0 : 1;
}

int dies_or_stalls(const torchtp::Group& world, const std::string& mode) {
  const int victim = world.size() - 1;
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
  const auto start = Clock::now();
  auto t = torch::ones({1024});
  try {
    for (int i = 0; i < 100; ++i) {
      world.all_reduce(t);
    }
    std::cerr << "FAIL: all_reduce succeeded without rank " << victim << "\n";
    return 1;
  } catch (const c10::Error& e) {
    const int code = verdict(
        world, contains(e.what_without_backtrace(), world.rank_label()),
        seconds_since(start), e.what_without_backtrace(), world.rank_label());
    if (code == 0 && world.rank() == 0) {
      std::cout << "1 passed, 0 failed\n";
    }
    std::cout.flush();
    // Leave without the destructors: the group is broken by design.
    _exit(code);
  }
}

// One rank alone gets a bad input; the job must end within seconds and
// every rank must say which rank failed first and why.
int bad_input(const torchtp::Group& world, bool uncaught, int victim) {
  torchtp::RowParallelLinear row(torchtp::RowParallelLinearOptions(512, 8));
  auto x = torch::ones({2, world.rank() == victim ? 500 : 512});
  const auto start = Clock::now();
  auto failed = [&](const c10::Error& e) {
    // What a user's main does with an error: tell the job, then leave.
    const std::string first = torchtp::report_failure(e);
    const std::string msg = e.what_without_backtrace();
    if (world.rank() == victim) {
      std::cout << "rank " << world.rank() << " raised: " << msg << "\n";
      return 1;
    }
    const std::string expected =
        "rank " + std::to_string(victim) +
        " raised: torchtp::RowParallelLinear: expected input of shape [*, 512]";
    const bool ok = contains(msg, expected) && contains(first, expected) &&
                    contains(msg, world.rank_label());
    // Returns through the destructors, as a user's main would: they must
    // not wait for the broken group either.
    return verdict(world, ok, seconds_since(start), msg, expected);
  };
  try {
    // The victim may fail before a peer has seen this barrier complete: the
    // barrier then raises the failure too.
    world.barrier();
  } catch (const c10::Error& e) {
    return failed(e);
  }
  if (world.rank() == victim) {
    // When the failure happens, for the test to time the job's end from.
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    std::cout
        << "failing at epoch ms "
        << std::chrono::duration_cast<std::chrono::milliseconds>(now).count()
        << std::endl;
    if (uncaught) {
      row(x); // raises; nothing catches it
    }
  }
  try {
    for (int i = 0; i < 3; ++i) {
      row(x);
    }
  } catch (const c10::Error& e) {
    return failed(e);
  }
  std::cerr << "FAIL: forward succeeded on rank " << world.rank() << "\n";
  return 1;
}

// After a refused collective no data moved: the group still reduces
// correctly. Returns the mode's exit code.
int group_still_works(const torchtp::Group& world) {
  auto u = torch::ones({3});
  world.all_reduce(u);
  if (!torch::equal(u, torch::full({3}, float(world.size())))) {
    std::cerr << "FAIL: the group is wrong after the mismatch on rank "
              << world.rank() << "\n";
    return 1;
  }
  world.barrier();
  if (world.rank() == 0) {
    std::cout << "1 passed, 0 failed\n";
  }
  return 0;
}

int mismatch(const torchtp::Group& world) {
  auto t = torch::ones({world.rank() == 0 ? 4 : 5});
  const auto start = Clock::now();
  try {
    world.all_reduce(t);
    std::cerr << "FAIL: all_reduce of different sizes succeeded on rank "
              << world.rank() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    const bool ok = contains(msg, "ranks called different collectives") &&
                    contains(msg, "16 bytes") && contains(msg, "20 bytes") &&
                    contains(msg, world.rank_label());
    if (verdict(
            world, ok, seconds_since(start), msg, "16 bytes ... 20 bytes")) {
      return 1;
    }
  }
  return group_still_works(world);
}

// Under TORCHTP_DEBUG=1, ranks that call the same collectives in another
// order all raise at the first, naming each rank's call.
int order(const torchtp::Group& world) {
  auto t = torch::ones({4});
  const auto start = Clock::now();
  try {
    if (world.rank() == 0) {
      world.all_reduce(t);
      world.all_gather(t, 0);
    } else {
      world.all_gather(t, 0);
      world.all_reduce(t);
    }
    std::cerr << "FAIL: collectives in another order passed on rank "
              << world.rank() << "\n";
    return 1;
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    std::string others = world.size() > 2 ? "ranks 1" : "rank 1";
    for (int r = 2; r < world.size(); ++r) {
      others += ", " + std::to_string(r);
    }
    const std::string expected =
        "rank 0 called #0 all_reduce(sum) of [4] Float; " + others +
        " called #0 all_gather(dim 0) of [4] Float";
    const bool ok = contains(msg, "ranks disagree on collective #0") &&
                    contains(msg, expected) &&
                    contains(msg, world.rank_label());
    if (verdict(world, ok, seconds_since(start), msg, expected)) {
      return 1;
    }
  }
  return group_still_works(world);
}

} // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "dies" && mode != "stalls" && mode != "bad_input" &&
      mode != "uncaught" && mode != "mismatch" && mode != "order") {
    std::cerr << "usage: test_failures "
                 "dies|stalls|bad_input|uncaught|mismatch|order\n";
    return 2;
  }
  torchtp::Group world = torchtp::init_from_env();
  if (world.size() == 1) {
    std::cerr << "test_failures needs at least two ranks\n";
    return 2;
  }
  if (mode == "bad_input" || mode == "uncaught") {
    // Rank 0 serves the store: as the victim it must stay until the others
    // have read its failure.
    const int victim = argc > 2 ? std::atoi(argv[2]) : world.size() - 1;
    return bad_input(world, mode == "uncaught", victim);
  }
  if (mode == "mismatch") {
    return mismatch(world);
  }
  if (mode == "order") {
    return order(world);
  }
  return dies_or_stalls(world, mode);
}
