#!/usr/bin/env bash
# Installs every Debian package torchtp needs to build, test and run its demo.
# Idempotent: when all packages are present it does nothing (no apt-get update).
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev          # tensors, autograd, nn, optim, c10d (TCPStore, Gloo)
  libgloo-dev           # headers that ProcessGroupGloo.hpp includes
  libopenblas0-openmp   # fast sgemm; without it libtorch uses reference BLAS
  libgtest-dev libgmock-dev
  libbenchmark-dev
  nlohmann-json3-dev    # checkpoint metadata
  zlib1g-dev            # CRC-32 checksums of checkpoint shards
  libcli11-dev          # command lines of the launcher, examples, benchmarks
  gnuplot-nox           # the demo's loss-curve picture
  openmpi-bin           # tests: the main job started by mpirun
  iproute2              # tests: two hosts in network namespaces (ip netns)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
