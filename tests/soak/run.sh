#!/usr/bin/env bash
# Soak: trains the main job (examples/train_gpt) at TP=2 through torchtp-run
# for STEPS steps and samples every rank's resident memory (VmRSS), open file
# descriptors, sockets and shared-memory segments (memfd or /dev/shm, open or
# mapped) at each progress line. Compares the sample at step ~100 (the
# baseline: allocator pools, OpenBLAS buffers and the shm segments are all
# set up by then) with the last one taken while training (before the final
# checkpoint and sample, which open files of their own). Fails if any rank's
# RSS grew by more than SOAK_RSS_BOUND_MIB (default 8 MiB) plus
# SOAK_RSS_BOUND_PCT percent (default 2) of its baseline, or if any count of
# descriptors, sockets or segments grew at all. Prints a table.
#
# Usage: run.sh TORCHTP_RUN TRAIN_GPT DATA [STEPS [EXTRA train_gpt FLAGS...]]
#   CI runs 400 steps (ctest -R soak_short); the long run, by hand:
#   tests/soak/run.sh build/torchtp-run build/examples/train_gpt \
#       examples/data/shakespeare.txt 3000
set -euo pipefail
run=$1 train=$2 data=$3
steps=${4:-400}
shift $(($# < 4 ? $# : 4))
every=${SOAK_EVERY:-50}
baseline_step=100
bound_mib=${SOAK_RSS_BOUND_MIB:-8}
bound_pct=${SOAK_RSS_BOUND_PCT:-2}
[ "$steps" -gt $((baseline_step + every)) ] ||
  { echo "soak: STEPS must exceed $((baseline_step + every))" >&2; exit 2; }

work=$(mktemp -d)
launcher=""
cleanup() {
  if [ -n "$launcher" ] && kill -0 "$launcher" 2>/dev/null; then
    kill "$launcher" 2>/dev/null || true # the launcher stops its ranks
    wait "$launcher" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# A small model, so thousands of steps fit in minutes; dropout on, so the
# RNG streams run too.
"$run" --nproc-per-node 2 "$train" --data "$data" --tp 2 --steps "$steps" \
  --d-model 64 --heads 4 --layers 2 --seq 32 --batch 8 --dropout 0.1 \
  --log-every "$every" --sample-chars 20 --out "$work/out" "$@" \
  > "$work/log" 2>&1 &
launcher=$!

# The ranks are the launcher's children; RANK in their environment says
# which is which.
rank_pids() {
  local pid
  for pid in $(cat /proc/"$launcher"/task/*/children 2>/dev/null); do
    local r
    r=$(tr '\0' '\n' < /proc/"$pid"/environ 2>/dev/null |
        sed -n 's/^RANK=//p') || true
    [ -n "$r" ] && echo "$r $pid"
  done
}

# One sample of a rank: rss_kib fds sockets segments.
sample() {
  local pid=$1 rss fds sockets segments
  rss=$(awk '/^VmRSS:/ { print $2 }' /proc/"$pid"/status)
  fds=$(ls /proc/"$pid"/fd | wc -l)
  sockets=$(find /proc/"$pid"/fd -lname 'socket:*' 2>/dev/null | wc -l)
  # A segment counts once whether it is open, mapped or both.
  segments=$( { find /proc/"$pid"/fd \( -lname '/memfd:*' -o \
                  -lname '/dev/shm/*' \) -printf '%l\n' 2>/dev/null | \
                  sed 's/ (deleted)$//'
                awk '$6 ~ /^\/memfd:|^\/dev\/shm\// { print $6 }' \
                  /proc/"$pid"/maps; } | sort -u | wc -l)
  echo "$rss $fds $sockets $segments"
}

declare -A base last base_step last_step
seen=0
deadline=$((SECONDS + ${SOAK_TIMEOUT_S:-3600}))
while kill -0 "$launcher" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] ||
    { echo "soak: still running after ${SOAK_TIMEOUT_S:-3600} s" >&2; exit 1; }
  step=$(sed -n 's/^\[rank 0\] step *\([0-9]*\)\/.*/\1/p' "$work/log" |
         tail -n 1)
  step=${step:-0}
  # Progress lines up to the last step but one: the last is followed by the
  # final checkpoint, whose files would count as growth.
  if [ "$step" -gt "$seen" ] && [ "$step" -lt "$steps" ]; then
    seen=$step
    while read -r r pid; do
      s=$(sample "$pid") || continue
      if [ -z "${base[$r]:-}" ] && [ "$step" -ge "$baseline_step" ]; then
        base[$r]=$s base_step[$r]=$step
      fi
      last[$r]=$s last_step[$r]=$step
      echo "soak: step $step rank $r rss_kib fds sockets segments: $s"
    done < <(rank_pids)
  fi
  sleep 0.2
done
set +e
wait "$launcher"
code=$?
set -e
launcher=""
if [ "$code" -ne 0 ]; then
  tail -n 30 "$work/log"
  echo "soak: train_gpt exited $code"
  exit 1
fi
grep '^\[rank 0\] step' "$work/log" | sed -n '1p;$p'

fail=0
printf '\n%-5s %-14s %-14s %-12s %-9s %-9s %-9s\n' rank "rss@step(MiB)" \
  "rss@step(MiB)" "growth" fds sockets segments
for r in $(printf '%s\n' "${!base[@]}" | sort -n); do
  read -r b_rss b_fds b_sock b_seg <<< "${base[$r]}"
  read -r l_rss l_fds l_sock l_seg <<< "${last[$r]}"
  growth_kib=$((l_rss - b_rss))
  limit_kib=$((bound_mib * 1024 + b_rss * bound_pct / 100))
  printf '%-5s %-14s %-14s %-12s %-9s %-9s %-9s\n' "$r" \
    "$(awk -v k="$b_rss" 'BEGIN { printf "%.1f", k / 1024 }')@${base_step[$r]}" \
    "$(awk -v k="$l_rss" 'BEGIN { printf "%.1f", k / 1024 }')@${last_step[$r]}" \
    "$(awk -v k="$growth_kib" 'BEGIN { printf "%+.1f MiB", k / 1024 }')" \
    "$b_fds->$l_fds" "$b_sock->$l_sock" "$b_seg->$l_seg"
  if [ "$growth_kib" -gt "$limit_kib" ]; then
    echo "FAIL: rank $r RSS grew $((growth_kib / 1024)) MiB, more than" \
         "$bound_mib MiB + $bound_pct% of its baseline"
    fail=1
  fi
  for what in fds:$b_fds:$l_fds sockets:$b_sock:$l_sock \
              segments:$b_seg:$l_seg; do
    IFS=: read -r name b l <<< "$what"
    if [ "$l" -gt "$b" ]; then
      echo "FAIL: rank $r $name grew from $b to $l"
      fail=1
    fi
  done
done
if [ "${#base[@]}" -ne 2 ]; then
  echo "FAIL: sampled ${#base[@]} ranks at step >= $baseline_step, expected 2"
  fail=1
elif [ "${last_step[0]}" -le "${base_step[0]}" ]; then
  echo "FAIL: no sample after the baseline"
  fail=1
fi
[ "$fail" -eq 0 ] && echo "soak: PASS ($steps steps)"
exit "$fail"
