#!/usr/bin/env bash
# The main job started by OpenMPI's mpirun instead of torchtp-run, as a new
# user would start it (README "Run it"): init_from_env reads the rank and
# size from OMPI_COMM_WORLD_*, and the job trains with the loss curve of the
# same job under torchtp-run. A bad input ends the mpirun job with a
# non-zero exit and the message, in bounded time.
# Usage: test_mpirun.sh TORCHTP_RUN TRAIN_GPT DATA
set -uo pipefail
run=$1 train=$2 data=$3
source "$(dirname "$0")/check.sh"
if ! command -v mpirun > /dev/null; then
  echo "FAIL: mpirun not found (scripts/setup.sh installs openmpi-bin)"
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# CI runs as root; OpenMPI refuses that unless told it is meant.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# No network but loopback; one slot per rank even on a 2-core machine.
mpi=(mpirun -np 2 --oversubscribe --mca btl self,tcp
     --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
port() { shuf -i 20000-60000 -n 1; }
model=(--data "$data" --d-model 32 --heads 4 --layers 1 --seq 16
       --dtype float64 --log-every 1 --sample-chars 0)
small=("${model[@]}" --batch 4 --steps 6)

out=$(MASTER_ADDR=127.0.0.1 MASTER_PORT=$(port) timeout 300 "${mpi[@]}" \
  "$train" "${small[@]}" --out "$work/mpi" 2>&1)
rc=$?
check "mpirun -np 2 train_gpt exits 0 (got $rc)" [ "$rc" -eq 0 ]
check "the ranks form one world of 2" contains "$out" "2 ranks = tensor 2"
out=$(timeout 300 "$run" --nproc-per-node 2 "$train" "${small[@]}" \
  --out "$work/run" 2>&1)
diff=$(paste -d, "$work/mpi/loss.csv" "$work/run/loss.csv" | awk -F, '
  NR > 1 { d = $2 - $4; if (d < 0) d = -d; if (d > m) m = d; n++ }
  END { if (n != 6) print "rows:" n; else printf "%.3g", m + 0 }')
check "the loss curve equals torchtp-run's (largest difference $diff)" \
  awk -v d="$diff" 'BEGIN { exit !(d ~ /^[0-9.e+-]+$/ && d + 0 < 1e-9) }'

# Bad input: a batch that does not divide over the replicas.
start=$(now_ms)
out=$(MASTER_ADDR=127.0.0.1 MASTER_PORT=$(port) timeout 300 "${mpi[@]}" \
  "$train" "${model[@]}" --steps 2 --tp 1 --batch 3 --out "$work/bad" 2>&1)
rc=$?
elapsed=$(($(now_ms) - start))
check "a bad input ends the mpirun job non-zero (got $rc, ${elapsed} ms)" \
  [ "$rc" -ne 0 -a "$rc" -ne 124 ]
check "with the message" contains "$out" "must divide"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
