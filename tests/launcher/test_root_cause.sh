#!/usr/bin/env bash
# One rank alone fails (bad input to a layer); the job must end within
# seconds though TORCHTP_TIMEOUT_S is 300, every other rank's error must name
# the failing rank and quote its message, and torchtp-run must print that
# root cause once. Started through torchtp-run and, as a user without the
# launcher does, by hand with the variables init_from_env reads.
# Usage: test_root_cause.sh PATH_TO_TORCHTP_RUN PATH_TO_test_failures
#          WORLD_SIZE [FAILING_RANK]
# (default: the last rank; rank 0, which serves the store, is the other
# interesting case. TORCHTP_BACKEND from the environment picks the
# communicator.)
set -u

if [[ $# -lt 3 || $# -gt 4 ]]; then
  echo "usage: $0 PATH_TO_TORCHTP_RUN PATH_TO_test_failures WORLD_SIZE [FAILING_RANK]" >&2
  exit 2
fi
RUN=$1
PROG=$2
WS=$3
VICTIM=${4:-$((WS - 1))}
export TORCHTP_TIMEOUT_S=300
# An abort must not spend seconds writing a core.
ulimit -c 0
# Not speed targets: bounds that prove nobody waited out the 300 s
# timeout. From the failing rank's error to the last process's exit; and
# the whole run, process start-up included (slow on a loaded machine).
BOUND_MS=20000
TOTAL_MS=150000
EXPECTED="rank $VICTIM raised: torchtp::RowParallelLinear: expected input of shape [*, 512]"
source "$(dirname "$0")/check.sh"

count() { grep -cF -- "$2" <<<"$1"; }
# When the failing rank raised (it prints the epoch ms); 0 when it did not.
failed_at() {
  local t
  t=$(grep -o 'failing at epoch ms [0-9]*' <<<"$1" | grep -o '[0-9]*$' | head -n 1)
  echo "${t:-0}"
}

survivors_ok() { # OUTPUT PREFIX: every rank but the victim printed OK
  local r
  for ((r = 0; r < WS; r++)); do
    [[ $r -eq $VICTIM ]] && continue
    grep -qF -- "$2rank $r OK after" <<<"$1" || return 1
    grep -F -- "$2rank $r OK after" <<<"$1" | grep -qF -- "$EXPECTED" ||
      return 1
  done
}

for mode in bad_input uncaught; do
  # The victim exits 1 after reporting, or aborts (SIGABRT) when the error
  # escapes its main.
  want_rc=1
  [[ $mode == uncaught ]] && want_rc=134

  # a) through the launcher
  start=$(now_ms)
  out=$(timeout 120 "$RUN" --nproc-per-node "$WS" "$PROG" "$mode" "$VICTIM" 2>&1)
  rc=$?
  end=$(now_ms)
  elapsed=$((end - start))
  check "$mode launcher: exit $want_rc (got $rc)" [ "$rc" -eq "$want_rc" ]
  after=$((end - $(failed_at "$out")))
  check "$mode launcher: ended ${after} ms after the failure (< $BOUND_MS)" \
    [ "$after" -lt "$BOUND_MS" ]
  check "$mode launcher: ran ${elapsed} ms in all (< $TOTAL_MS)" \
    [ "$elapsed" -lt "$TOTAL_MS" ]
  check "$mode launcher: every other rank names rank $VICTIM and its message" \
    survivors_ok "$out" "] "
  check "$mode launcher: root cause printed once" \
    [ "$(count "$out" "torchtp-run: root cause")" -eq 1 ]
  check "$mode launcher: the root cause is rank $VICTIM's error" \
    contains "$out" "torchtp-run: root cause (first failure in the job): $EXPECTED"
  echo "$mode launcher ws$WS ${TORCHTP_BACKEND:-auto} failing rank $VICTIM: ${after} ms after the failure, ${elapsed} ms in all"

  # b) without the launcher: the ranks started by hand
  port=$("$RUN" --no-tag --nproc-per-node 1 bash -c 'echo $MASTER_PORT')
  dir=$(mktemp -d)
  start=$(now_ms)
  pids=()
  for ((r = 0; r < WS; r++)); do
    RANK=$r WORLD_SIZE=$WS LOCAL_RANK=$r LOCAL_WORLD_SIZE=$WS \
      MASTER_ADDR=127.0.0.1 MASTER_PORT=$port OMP_NUM_THREADS=1 \
      timeout 120 "$PROG" "$mode" "$VICTIM" >"$dir/out$r" 2>&1 &
    pids+=($!)
  done
  rcs=()
  for ((r = 0; r < WS; r++)); do
    wait "${pids[$r]}"
    rcs+=($?)
  done
  end=$(now_ms)
  elapsed=$((end - start))
  out=$(cat "$dir"/out*)
  rm -rf "$dir"
  after=$((end - $(failed_at "$out")))
  check "$mode alone: ended ${after} ms after the failure (< $BOUND_MS)" \
    [ "$after" -lt "$BOUND_MS" ]
  check "$mode alone: ran ${elapsed} ms in all (< $TOTAL_MS)" \
    [ "$elapsed" -lt "$TOTAL_MS" ]
  check "$mode alone: rank $VICTIM exits $want_rc (got ${rcs[$VICTIM]})" \
    [ "${rcs[$VICTIM]}" -eq "$want_rc" ]
  ok=true
  for ((r = 0; r < WS; r++)); do
    [[ $r -eq $VICTIM || ${rcs[$r]} -eq 0 ]] || ok=false
  done
  check "$mode alone: every other rank exits 0 (got ${rcs[*]})" $ok
  check "$mode alone: every other rank names rank $VICTIM and its message" \
    survivors_ok "$out" ""
  echo "$mode alone ws$WS ${TORCHTP_BACKEND:-auto} failing rank $VICTIM: ${after} ms after the failure, ${elapsed} ms in all"
done

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
