#pragma once

#include <exception>
#include <string>

namespace torchtp {

/// Tells the whole job that this rank failed with `error`, so that no rank
/// waits for it and every rank says what went wrong first:
///
/// - records "rank R raised: <error's message>" (R the world rank) in the
///   job's rendezvous store as its first failure, unless another rank's
///   is there already;
/// - breaks every group of this process: the collectives that peers are
///   waiting in, or call next, raise a `c10::Error` that quotes the first
///   failure ("... first failure in the job: rank 3 raised:
///   torchtp::RowParallelLinear: expected input of shape [*, 512] ...");
/// - writes the `TORCHTP_ERROR_FILE` that `torchtp-run` gives each rank,
///   from which it prints the job's root cause once at the end.
///
/// Call it where your main catches an error, before leaving; it never
/// raises and returns the job's first failure (this rank's, or an earlier
/// one of another rank's). After `init_from_env()`, an exception that
/// escapes `main` (std::terminate) is reported the same way before the
/// process aborts. World rank 0 serves the store, so there it waits (at
/// most 2 s) until the other ranks have read the failure.
///
/// Example:
/// ```
///   int main() {
///     try {
///       torchtp::Group world = torchtp::init_from_env();
///       train(world);
///     } catch (const std::exception& e) {
///       std::cerr << torchtp::report_failure(e) << "\n";
///       return 1;
///     }
///   }
/// ```
std::string report_failure(const std::exception& error);

namespace detail {
/// Makes std::terminate report the exception in flight first (init does).
void install_terminate_report();
} // namespace detail

} // namespace torchtp
