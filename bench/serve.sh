#!/usr/bin/env bash
# torchtp-serve under load (bench_serve) at TP=1 and TP=2, next to static
# generate batches doing the same work (bench_generate: 16 prompts of the
# mean prompt length at once). Random weights of a model shape, float32.
# Usage: bench/serve.sh BUILD OUT_DIR SHAPE [CONCURRENCY] [TP...]
#   SHAPE: gpt2 (GPT-2 small) or qwen (Qwen2.5-0.5B)
#   SERVE_FLAGS (environment): more torchtp-serve flags, e.g.
#   --batch-invariant; STATIC=0 skips the static batches.
# Writes OUT_DIR/serve_SHAPE.json (bench_serve's rows) and
# OUT_DIR/serve_SHAPE_static_tpN.json (bench_generate's).
set -euo pipefail
build=$1 out=$2 shape=$3 concurrency=${4:-1,4,16,64}
shift $(($# < 4 ? $# : 4))
tps=("$@")
[ ${#tps[@]} -eq 0 ] && tps=(1 2)
mkdir -p "$out"
work=$(mktemp -d)
launcher=""
trap '[ -n "$launcher" ] && kill -KILL "$launcher" 2>/dev/null; rm -rf "$work"' EXIT

case "$shape" in
  gpt2) "$build/examples/random_gpt2" --out "$work/model" --vocab 50257 \
          --positions 1024 --embd 768 --layers 12 --heads 12 --seed 1 \
          > /dev/null ;;
  qwen) "$build/examples/random_gpt2" --family qwen2 --out "$work/model" \
          --vocab 151936 --positions 2048 --embd 896 --layers 24 --heads 14 \
          --kv-heads 2 --ffn 4864 --tied --seed 1 > /dev/null ;;
  *) echo "serve.sh: SHAPE is gpt2 or qwen" >&2; exit 2 ;;
esac
min_prompt=16 max_prompt=256 tokens=64
mean_prompt=$(((min_prompt + max_prompt) / 2))
json="$out/serve_$shape${SERVE_FLAGS:+_invariant}.json"
rm -f "$json"

for tp in "${tps[@]}"; do
  rm -f "$work/port"
  "$build/torchtp-run" --nproc-per-node "$tp" "$build/torchtp-serve" \
    --model "$work/model" --port 0 --port-file "$work/port" \
    --max-batch 16 --max-queue 1024 ${SERVE_FLAGS:-} > "$work/server.log" 2>&1 &
  launcher=$!
  for _ in $(seq 1200); do [ -s "$work/port" ] && break; sleep 0.1; done
  [ -s "$work/port" ] || { cat "$work/server.log"; exit 1; }
  "$build/bench/bench_serve" --url "http://127.0.0.1:$(cat "$work/port")" \
    --concurrency "$concurrency" --min-prompt $min_prompt \
    --max-prompt $max_prompt --max-tokens $tokens --vocab 50000 \
    --label "$shape tp$tp${SERVE_FLAGS:+ $SERVE_FLAGS}" --json "$json"
  kill -TERM "$launcher"
  wait "$launcher" || true
  launcher=""
  # The same work as one static batch of 16 prompts of the mean length.
  [ "${STATIC:-1}" = 0 ] && continue
  "$build/torchtp-run" --no-tag --nproc-per-node "$tp" \
    "$build/bench/bench_generate" --model "$work/model" --dtypes float32 \
    --batches 1,16 --backends shm --prompt $mean_prompt --new-tokens $tokens \
    --repeats 1 --json "$out/serve_${shape}_static_tp$tp.json" |
    { grep -E "^(dtype|float32) " || true; } | sed "s/^/static tp$tp: /"
done
