#!/usr/bin/env bash
# Tokens/s of the main job (train_gpt, default model) in the configurations
# that matter on one host, alternated round by round so that a change of
# load hits all of them; each figure is the median of its rounds.
#
#   bench/train_throughput.sh BUILD_DIR [ROUNDS] [STEPS] [OUT_JSON]
#
# tp1_1thread is the strong-scaling reference: TP=2 on two cores is at best
# twice it. tp1_all_cores is what a user runs without torchtp; dp2 is plain
# data parallelism on the same two ranks.
set -euo pipefail
build=${1:?usage: train_throughput.sh BUILD_DIR [ROUNDS] [STEPS] [OUT_JSON]}
rounds=${2:-5}
steps=${3:-40}
json=${4:-out/train_throughput.json}
root=$(cd "$(dirname "$0")/.." && pwd)
run="$build/torchtp-run"
job="$build/examples/train_gpt"
data="$root/examples/data/shakespeare.txt"
cores=$(nproc)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

configs=(tp1_1thread tp1_all_cores tp2_gloo tp2_shm dp2_shm)
# The rate of the last progress line: steps after the first, so start-up
# and the first step's allocations are left out.
rate() {
  local cfg=$1 env=() nproc=1 extra=()
  case $cfg in
    tp1_1thread) env=(OMP_NUM_THREADS=1) ;;
    tp1_all_cores) env=(OMP_NUM_THREADS="$cores") ;;
    tp2_gloo) env=(TORCHTP_BACKEND=gloo) nproc=2 ;;
    tp2_shm) env=(TORCHTP_BACKEND=shm) nproc=2 ;;
    dp2_shm) env=(TORCHTP_BACKEND=shm) nproc=2 extra=(--tp 1) ;;
  esac
  env "${env[@]}" "$run" --nproc-per-node "$nproc" "$job" --data "$data" \
    --steps "$steps" --log-every "$steps" --sample-chars 0 \
    --out "$tmp/$cfg" "${extra[@]}" 2>&1 |
    awk '/tokens\/s/ { for (i = 1; i <= NF; i++) if ($i == "tokens/s") r = $(i-1) } END { print r }'
}

declare -A all
for ((r = 0; r < rounds; r++)); do
  for cfg in "${configs[@]}"; do
    all[$cfg]+="$(rate "$cfg") "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
echo "# train_gpt tokens/s on $model, $cores cores; median of $rounds alternating rounds of $steps steps"
printf '%-15s %10s %s\n' config tokens/s rounds
declare -A med
for cfg in "${configs[@]}"; do
  med[$cfg]=$(echo "${all[$cfg]}" | median)
  printf '%-15s %10.0f   %s\n' "$cfg" "${med[$cfg]}" "${all[$cfg]}"
done
mkdir -p "$(dirname "$json")"
{
  printf '{"machine": "%s", "cores": %d, "rounds": %d, "steps": %d, "tokens_per_s": {' \
    "$model" "$cores" "$rounds" "$steps"
  sep=""
  for cfg in "${configs[@]}"; do
    printf '%s"%s": %s' "$sep" "$cfg" "${med[$cfg]}"
    sep=", "
  done
  echo "}}"
} >"$json"
awk -v one="${med[tp1_1thread]}" -v all="${med[tp1_all_cores]}" \
  -v gloo="${med[tp2_gloo]}" -v shm="${med[tp2_shm]}" 'BEGIN {
  printf "TP=2 shm strong-scaling efficiency vs TP=1 one thread: %.0f%%\n", 100 * shm / (2 * one)
  printf "TP=2 shm / TP=2 gloo: %.2fx; TP=2 shm / TP=1 all cores: %.2fx\n", shm / gloo, shm / all }'
echo "wrote $json"
