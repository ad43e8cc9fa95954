#!/usr/bin/env bash
# End to end: generate --model on a random GPT-2 directory in Hugging Face's
# layout (written by random_gpt2) gives the same greedy tokens at TP=1, 2,
# 3 and 5 (12 heads split 3, 3, 2, 2, 2), so do random Llama, Mistral and
# Qwen2 directories at TP=1, 2 and 3, and bad input is refused with a clear
# message. With a real tokenizer next to the weights (Qwen2's and Llama 2's,
# from the npm cache scripts/setup.sh fills), --prompt text gives the same
# text at TP=1, 2 and 3.
# Usage: test_generate.sh TORCHTP_RUN GENERATE RANDOM_GPT2 TOKENIZER_MODELS
set -euo pipefail
run=$1 generate=$2 random_gpt2=$3 tokenizers=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0 failed=0
check() { # name, condition
  if eval "$2"; then echo "PASS: $1"; passed=$((passed + 1));
  else echo "FAIL: $1"; failed=$((failed + 1)); fi
}

# A vocabulary no TP size divides; 12 heads over 1, 2, 3 or 5 ranks.
"$random_gpt2" --out "$work/gpt2" --vocab 101 --positions 24 --embd 48 \
  --layers 2 --heads 12 --std 0.5 --seed 3
args=(--model "$work/gpt2" --prompt-ids 5,17,42,99,0 --max-new-tokens 12
      --greedy --dtype float64 --eos-id -1)
for tp in 1 2 3 5; do
  "$run" --nproc-per-node "$tp" "$generate" "${args[@]}" \
    --json "$work/tp$tp.json" > "$work/tp$tp.log"
  # Rank 0 streams the ids on one line (the launcher tags it "[rank 0]").
  sed -n -E 's/^(\[rank 0\] )?([0-9]+( [0-9]+)*) ?$/\2/p' "$work/tp$tp.log" |
    head -n 1 > "$work/ids$tp"
done
echo "TP=1 tokens: $(cat "$work/ids1")"
check "12 tokens generated" "[ \$(wc -w < '$work/ids1') -eq 12 ]"
check "TP=2 gives TP=1's tokens" "cmp -s '$work/ids1' '$work/ids2'"
check "TP=3 gives TP=1's tokens" "cmp -s '$work/ids1' '$work/ids3'"
check "TP=5 (uneven heads and vocabulary) gives TP=1's tokens" \
  "cmp -s '$work/ids1' '$work/ids5'"
check "every token is in the real vocabulary" \
  "awk '{ for (i = 1; i <= NF; i++) if (\$i >= 101) exit 1 }' '$work/ids1'"
check "the JSON holds the steps" "grep -q '\"generated_ids\"' '$work/tp2.json'"
check "rank 0 reports the decode speed" "grep -q 'ms/token' '$work/tp2.log'"

# The Llama-layout families (random_gpt2 --family), each over two bfloat16
# files: the same greedy tokens at TP=1, 2 and 3 (8 query heads over 2
# key/value heads, split 3, 3, 2 at 3 ranks; Qwen2 tied with q/k/v biases).
for family in llama mistral qwen2; do
  tied=$([ "$family" = qwen2 ] && echo --tied || true)
  "$random_gpt2" --family "$family" --out "$work/$family" --vocab 101 \
    --positions 32 --embd 48 --layers 2 --heads 8 --kv-heads 2 --ffn 40 \
    --head-dim 8 --std 0.3 --seed 4 --dtype bfloat16 --shards 2 $tied \
    > /dev/null
  for tp in 1 2 3; do
    "$run" --nproc-per-node "$tp" "$generate" --model "$work/$family" \
      --prompt-ids 5,17,42,99,0 --max-new-tokens 12 --greedy \
      --dtype float64 --eos-id -1 > "$work/$family$tp.log"
    sed -n -E 's/^(\[rank 0\] )?([0-9]+( [0-9]+)*) ?$/\2/p' \
      "$work/$family$tp.log" | head -n 1 > "$work/$family-ids$tp"
  done
  echo "$family TP=1 tokens: $(cat "$work/$family-ids1")"
  check "$family: 12 tokens generated" \
    "[ \$(wc -w < '$work/$family-ids1') -eq 12 ]"
  check "$family: TP=2 gives TP=1's tokens" \
    "cmp -s '$work/$family-ids1' '$work/$family-ids2'"
  check "$family: TP=3 gives TP=1's tokens" \
    "cmp -s '$work/$family-ids1' '$work/$family-ids3'"
done
# bfloat16 and int8 weights (int8 quantized as the loader reads each
# layer, with whole rows' scales at every size): for each, the same greedy
# tokens at TP=1, 2 and 3.
for dtype in int8 bfloat16; do
  for tp in 1 2 3; do
    "$run" --nproc-per-node "$tp" "$generate" --model "$work/llama" \
      --prompt-ids 5,17,42,99,0 --max-new-tokens 12 --greedy \
      --dtype $dtype --eos-id -1 > "$work/llama-$dtype$tp.log"
    sed -n -E 's/^(\[rank 0\] )?([0-9]+( [0-9]+)*) ?$/\2/p' \
      "$work/llama-$dtype$tp.log" | head -n 1 > "$work/llama-$dtype-ids$tp"
  done
  echo "llama $dtype TP=1 tokens: $(cat "$work/llama-$dtype-ids1")"
  check "llama $dtype: 12 tokens generated" \
    "[ \$(wc -w < '$work/llama-$dtype-ids1') -eq 12 ]"
  for tp in 2 3; do
    check "llama $dtype: TP=$tp gives TP=1's tokens" \
      "cmp -s '$work/llama-$dtype-ids1' '$work/llama-$dtype-ids$tp'"
  done
done
check "the index lists two files" \
  "[ \$(ls '$work/qwen2'/model-0000?-of-00002.safetensors | wc -l) -eq 2 ]"

# Text in, text out: random Qwen2 and Llama weights with real tokenizers
# (byte-level BPE and SentencePiece-style BPE with byte fallback).
json_field() { # file, field: the field's value as JSON
  node -e "process.stdout.write(JSON.stringify(require('$1')['$2']))"
}
prompt='Héllo, 世界! The café costs 12.50€ — 👋🏽'
for pair in qwen2:qwen3 llama:llama2; do
  family=${pair%%:*} tok=${pair#*:}
  "$random_gpt2" --family "$family" --out "$work/$family-text" --embd 32 \
    --layers 2 --heads 4 --kv-heads 2 --ffn 64 --positions 64 --std 0.3 \
    --tokenizer "$tokenizers/$tok" > /dev/null
  for tp in 1 2 3; do
    "$run" --nproc-per-node "$tp" "$generate" --model "$work/$family-text" \
      --prompt "$prompt" --max-new-tokens 10 --greedy --dtype float64 \
      --eos-id -1 --json "$work/$family-text$tp.json" > "$work/$family-text$tp.log"
  done
  for field in generated_ids generated_text; do
    json_field "$work/$family-text1.json" $field > "$work/$family-f1"
    for tp in 2 3; do
      json_field "$work/$family-text$tp.json" $field > "$work/$family-f$tp"
      check "$family text: TP=$tp gives TP=1's $field" \
        "cmp -s '$work/$family-f1' '$work/$family-f$tp'"
    done
  done
  check "$family text: the JSON holds the prompt as given" \
    "[ \"\$(json_field '$work/$family-text2.json' prompt_text)\" = \
       \"\$(node -e 'process.stdout.write(JSON.stringify(process.argv[1]))' \"$prompt\")\" ]"
  check "$family text: some text was generated" \
    "[ -s '$work/$family-f1' ] && [ \"\$(cat '$work/$family-f1')\" != '\"\"' ]"
  # --max-new-tokens 0: the prompt's ids; they decode back to the prompt.
  "$run" --nproc-per-node 2 "$generate" --model "$work/$family-text" \
    --prompt "$prompt" --max-new-tokens 0 > "$work/$family-enc.log"
  ids=$(sed -n -E 's/^(\[rank 0\] )?([0-9]+(,[0-9]+)*)$/\2/p' "$work/$family-enc.log")
  check "$family text: --max-new-tokens 0 prints the prompt_ids" \
    "[ '[$ids]' = \"\$(json_field '$work/$family-text1.json' prompt_ids)\" ]"
  "$run" --nproc-per-node 1 "$generate" --model "$work/$family-text" \
    --prompt-ids "$ids" --max-new-tokens 0 > "$work/$family-dec.log"
  check "$family text: the ids decode back to the prompt" \
    "grep -qF -- '$prompt' '$work/$family-dec.log'"
  # --prompt-file: the file's exact bytes, trailing newline included.
  printf '%s\n' "$prompt" > "$work/prompt.txt"
  "$run" --nproc-per-node 1 "$generate" --model "$work/$family-text" \
    --prompt-file "$work/prompt.txt" --max-new-tokens 0 > "$work/$family-file.log"
  "$run" --nproc-per-node 1 "$generate" --model "$work/$family-text" \
    --prompt "$prompt
" --max-new-tokens 0 > "$work/$family-nl.log"
  check "$family text: --prompt-file encodes the file's exact bytes" \
    "[ -n \"\$(grep -E '^(\[rank 0\] )?[0-9,]+$' '$work/$family-file.log')\" ] &&
     diff <(grep -E '^(\[rank 0\] )?[0-9,]+$' '$work/$family-file.log') \
          <(grep -E '^(\[rank 0\] )?[0-9,]+$' '$work/$family-nl.log') > /dev/null &&
     ! diff <(grep -E '^(\[rank 0\] )?[0-9,]+$' '$work/$family-file.log') \
          <(grep -E '^(\[rank 0\] )?[0-9,]+$' '$work/$family-enc.log') > /dev/null"
done

# Bad input: each ends the job with a non-zero exit and a clear message.
refused() { # name, expected message, command...
  local name=$1 want=$2; shift 2
  if timeout 120 "$@" > "$work/bad.log" 2>&1; then
    check "$name" false
  else
    check "$name" "grep -q -- '$want' '$work/bad.log'"
  fi
}
refused "text for a --model without a tokenizer is refused" "has no tokenizer" \
  "$run" --nproc-per-node 1 "$generate" --model "$work/gpt2" --prompt hi
refused "a prompt beyond the context is refused" "context" \
  "$run" --nproc-per-node 2 "$generate" --model "$work/gpt2" \
  --prompt-ids 1,2,3,4,5 --max-new-tokens 20
cp -r "$work/gpt2" "$work/cut"
truncate -s -64 "$work/cut/model.safetensors"
refused "a truncated model.safetensors is named" "cut/model.safetensors" \
  "$run" --nproc-per-node 2 "$generate" --model "$work/cut" --prompt-ids 1,2
refused "a context past the sliding window is refused" "sliding_window" \
  bash -c "sed -i 's/\"sliding_window\": null/\"sliding_window\": 16/' \
    '$work/mistral/config.json' && '$run' --nproc-per-node 1 '$generate' \
    --model '$work/mistral' --prompt-ids 1,2 --max-seq-len 32"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
