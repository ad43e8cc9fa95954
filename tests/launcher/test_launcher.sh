#!/usr/bin/env bash
# End-to-end checks for the torchtp-run launcher.
# Usage: test_launcher.sh PATH_TO_TORCHTP_RUN PATH_TO_exit_code_rank.sh
set -u

if [[ $# -ne 2 ]]; then
  echo "usage: $0 PATH_TO_TORCHTP_RUN PATH_TO_exit_code_rank.sh" >&2
  exit 2
fi
RUN=$1
HELPER=$2
# Unique per run, so pgrep cannot confuse our ranks with anyone else's.
MARKER="torchtp_launcher_test_$$_$RANDOM"
source "$(dirname "$0")/check.sh"

no_leftovers() { ! pgrep -f "$MARKER" >/dev/null; }

# a) help
out=$("$RUN" --help 2>&1)
rc=$?
check "a) --help exits 0" [ "$rc" -eq 0 ]
check "a) --help mentions --nproc-per-node" contains "$out" --nproc-per-node

# b) all ranks succeed
out=$("$RUN" --nproc-per-node 2 bash "$HELPER" 2>&1)
rc=$?
check "b) 2 ranks succeed: exit 0" [ "$rc" -eq 0 ]
check "b) rank 0 line tagged" contains "$out" "[rank 0] hello from 0 of 2"
check "b) rank 1 line tagged" contains "$out" "[rank 1] hello from 1 of 2"

# c) one failing rank stops the others quickly and leaves no orphans
start=$(now_ms)
out=$("$RUN" --nproc-per-node 4 bash "$HELPER" 2 3 "$MARKER" 2>&1)
rc=$?
elapsed=$(($(now_ms) - start))
check "c) rank 2 exits 3: launcher exits 3 (got $rc)" [ "$rc" -eq 3 ]
check "c) finished in ${elapsed} ms (< 15000)" [ "$elapsed" -lt 15000 ]
check "c) failure reported" contains "$out" "rank 2 (pid"
check "c) no rank or descendant left running" no_leftovers

# d) bad invocations
out=$("$RUN" --nproc-per-node 1 /nonexistent/torchtp_no_such_prog 2>&1)
rc=$?
check "d) missing program: non-zero exit (got $rc)" [ "$rc" -ne 0 ]
check "d) missing program is named" \
  contains "$out" "/nonexistent/torchtp_no_such_prog"
out=$("$RUN" --nproc-per-node 0 bash "$HELPER" 2>&1)
rc=$?
check "d) --nproc-per-node 0: exit 2 (got $rc)" [ "$rc" -eq 2 ]
out=$("$RUN" --nproc-per-node 1 2>&1)
rc=$?
check "d) no PROGRAM: exit 2 (got $rc)" [ "$rc" -eq 2 ]
out=$("$RUN" --nnodes 2 --node-rank 0 bash "$HELPER" 2>&1)
rc=$?
check "d) --nnodes 2 without master: exit 2 (got $rc)" [ "$rc" -eq 2 ]
out=$("$RUN" --nnodes 2 --node-rank 2 --master-addr h --master-port 1 \
  bash "$HELPER" 2>&1)
rc=$?
check "d) --node-rank 2 of 2: exit 2 (got $rc)" [ "$rc" -eq 2 ]

# e) environment of each rank
out=$(env -u OMP_NUM_THREADS "$RUN" --nproc-per-node 2 bash "$HELPER" 2>&1)
rc=$?
check "e) env run exits 0" [ "$rc" -eq 0 ]
check "e) MASTER_PORT is a number" \
  grep -qE '^\[rank 0\] MASTER_ADDR=127\.0\.0\.1 MASTER_PORT=[0-9]+$' <<<"$out"
check "e) LOCAL_WORLD_SIZE set" \
  contains "$out" "[rank 1] LOCAL_RANK=1 LOCAL_WORLD_SIZE=2"
check "e) OMP_NUM_THREADS set" \
  grep -qE '^\[rank 0\] OMP_NUM_THREADS=[0-9]+$' <<<"$out"
check "e) GROUP_RANK and TORCHTP_RUN set" \
  contains "$out" "[rank 0] GROUP_RANK=0 TORCHTP_RUN=1"
out=$(OMP_NUM_THREADS=7 "$RUN" --nproc-per-node 1 bash "$HELPER" 2>&1)
check "e) inherited OMP_NUM_THREADS passed through" \
  contains "$out" "[rank 0] OMP_NUM_THREADS=7"
out=$(OMP_NUM_THREADS=7 "$RUN" --omp-threads 3 --nproc-per-node 1 \
  bash "$HELPER" 2>&1)
check "e) --omp-threads overrides" contains "$out" "[rank 0] OMP_NUM_THREADS=3"
out=$("$RUN" --nnodes 2 --node-rank 1 --master-addr 127.0.0.1 \
  --master-port 29511 --nproc-per-node 2 bash "$HELPER" 2>&1)
check "e) node 1 of 2: global ranks 2 and 3" \
  contains "$out" "[rank 3] hello from 3 of 4"

# f) a rank killed by SIGKILL
out=$("$RUN" --nproc-per-node 2 bash "$HELPER" 1 kill "$MARKER" 2>&1)
rc=$?
check "f) SIGKILLed rank: exit 137 (got $rc)" [ "$rc" -eq 137 ]
# A rank that wrote no error file: the root cause is how it ended, once.
check "f) root cause printed once" \
  [ "$(grep -cF "torchtp-run: root cause" <<<"$out")" -eq 1 ]
check "f) root cause names the killed rank" \
  contains "$out" "root cause (first failure in the job): rank 1 (pid"
check "f) no rank or descendant left running" no_leftovers

# f2) a rank that reported its failure (wrote TORCHTP_ERROR_FILE, as
# torchtp::report_failure does): its root cause is printed once, and the
# others get a moment to exit by themselves before SIGTERM.
out=$("$RUN" --nproc-per-node 2 bash -c '
  if [[ $RANK == 1 ]]; then
    printf "{\"rank\": 1, \"message\": \"m\", \"root_cause\": \"rank 1 raised: boom\", \"timestamp_us\": 1}\n" >"$TORCHTP_ERROR_FILE"
    exit 3
  fi
  sleep 0.3; echo "rank 0 left by itself"' 2>&1)
rc=$?
check "f2) reported failure: exit 3 (got $rc)" [ "$rc" -eq 3 ]
check "f2) the root cause from the error file, once" \
  [ "$(grep -cF "torchtp-run: root cause (first failure in the job): rank 1 raised: boom" <<<"$out")" -eq 1 ]
check "f2) the other rank was not cut short" \
  contains "$out" "[rank 0] rank 0 left by itself"

# g) arguments after PROGRAM are passed through untouched
out=$("$RUN" --nproc-per-node 1 bash -c 'echo "args:$*"' x --foo -y 1 2>&1)
check "g) dash arguments reach PROGRAM" \
  contains "$out" "[rank 0] args:--foo -y 1"
out=$("$RUN" --no-tag --nproc-per-node 1 bash -c 'echo plain' 2>&1)
check "g) --no-tag" [ "$out" = plain ]

# h) SIGTERM to the launcher is forwarded and the ranks are stopped
"$RUN" --nproc-per-node 2 bash "$HELPER" 99 0 "$MARKER" >/dev/null 2>&1 &
launcher=$!
sleep 1
start=$(now_ms)
kill -TERM "$launcher"
wait "$launcher"
rc=$?
elapsed=$(($(now_ms) - start))
check "h) SIGTERM: exit 143 (got $rc) in ${elapsed} ms" \
  [ "$rc" -eq 143 -a "$elapsed" -lt 15000 ]
check "h) no rank or descendant left running" no_leftovers

# i) a user's OPENBLAS_CORETYPE reaches the ranks unchanged
out=$(OPENBLAS_CORETYPE=Haswell "$RUN" --nproc-per-node 1 \
  bash -c 'echo "core:$OPENBLAS_CORETYPE"' 2>&1)
check "i) OPENBLAS_CORETYPE set by the user is kept" \
  contains "$out" "[rank 0] core:Haswell"

# j) --interface: the ranks get GLOO_SOCKET_IFNAME; an interface this host
#    does not have is refused before any rank starts
out=$("$RUN" --nproc-per-node 2 --interface lo \
  bash -c 'echo "if:$GLOO_SOCKET_IFNAME"' 2>&1)
check "j) --interface lo reaches every rank" \
  contains "$out" "[rank 1] if:lo"
out=$("$RUN" --nproc-per-node 2 --interface no-such-if0 \
  bash -c 'echo started' 2>&1)
rc=$?
check "j) an unknown --interface exits 2 (got $rc)" [ "$rc" -eq 2 ]
check "j) and names it" contains "$out" "--interface no-such-if0: no such"
check "j) before any rank started" not_contains "$out" "started"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
