#!/usr/bin/env bash
# Test rank for torchtp-run. Usage: exit_code_rank.sh [RANK CODE [MARKER]]
#   no args      every rank prints its environment and exits 0
#   RANK CODE    rank RANK exits with CODE after 0.5 s ("kill": SIGKILLs
#                itself); the other ranks sleep 60 s so a test can prove
#                the launcher stopped them
#   MARKER       put into the sleeper's command line, for pgrep -f
echo "hello from ${RANK:-?} of ${WORLD_SIZE:-?}"
echo "OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
echo "MASTER_ADDR=${MASTER_ADDR:-unset} MASTER_PORT=${MASTER_PORT:-unset}"
echo "LOCAL_RANK=${LOCAL_RANK:-unset}" \
  "LOCAL_WORLD_SIZE=${LOCAL_WORLD_SIZE:-unset}"
echo "GROUP_RANK=${GROUP_RANK:-unset} TORCHTP_RUN=${TORCHTP_RUN:-unset}"

[[ $# -eq 0 ]] && exit 0

if [[ "${RANK:-}" == "$1" ]]; then
  sleep 0.5
  [[ "$2" == kill ]] && kill -9 $$
  exit "$2"
fi
# A child process (not exec) so the test also proves the launcher reaches
# a rank's descendants, not only the rank itself.
(exec -a "exit_code_rank_sleeper ${3:-}" sleep 60) &
wait
