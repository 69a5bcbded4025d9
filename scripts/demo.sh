#!/usr/bin/env bash
# Builds ckpt-demo and runs it: a small MLP trains and checkpoints asynchronously through a
# checkpoint child, then reloads its last checkpoint and checks it. Extra arguments go to
# ckpt-demo (see ckpt-demo --help), e.g. scripts/demo.sh --steps 1000 --mib 256.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
shmckpt_install_deps
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 --target ckpt-demo ckpt-inspect shmckpt-worker
out=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-demo.XXXXXX")
trap 'rm -rf "$out"' EXIT
./build/bin/ckpt-demo --dir "$out" "$@"
echo
echo "The last checkpoint, as ckpt-inspect lists it:"
last=$(ls -d "$out"/step_* | sort -t_ -k2 -n | tail -n 1)
./build/bin/ckpt-inspect list "$last"
