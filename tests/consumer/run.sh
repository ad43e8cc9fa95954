#!/usr/bin/env bash
# Installs the built torchtp into a scratch prefix, builds tests/consumer
# against it with find_package(torchtp), and runs it at 1, 2 and 4 ranks with
# the installed launcher.
# Usage: run.sh BUILD_DIR CONSUMER_SOURCE_DIR SCRATCH_DIR
set -euo pipefail
build=$1 src=$2 scratch=$3
rm -rf "$scratch"
mkdir -p "$scratch"
cmake --install "$build" --prefix "$scratch/prefix" > "$scratch/install.log"
generator=()
if command -v ninja > /dev/null; then generator=(-G Ninja); fi
cmake -S "$src" -B "$scratch/build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$scratch/prefix" \
  > "$scratch/configure.log"
cmake --build "$scratch/build" -j 2
for ws in 1 2 4; do
  "$scratch/prefix/bin/torchtp-run" --nproc-per-node "$ws" \
    "$scratch/build/consumer"
done
echo "1 passed, 0 failed"
