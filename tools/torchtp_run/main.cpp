// torchtp-run: starts one process per rank, like torchrun, for torchtp
// programs. Plain POSIX + CLI11 (+ nlohmann-json for the ranks' error
// files) so it builds without libtorch.

#include "job.h"
#include "options.h"

int main(int argc, char** argv) {
  torchtp::launcher::Options opts;
  if (auto code = torchtp::launcher::parse_args(argc, argv, opts))
    return *code;
  return torchtp::launcher::run_job(opts);
}
