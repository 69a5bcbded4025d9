#!/usr/bin/env bash
# Builds ckpt-demo and runs it: a small MLP trains and checkpoints asynchronously through a
# checkpoint child, then reloads its last checkpoint and checks it. Extra arguments go to
# ckpt-demo (see ckpt-demo --help), e.g. scripts/demo.sh --steps 1000 --mib 256. Without
# --dir the checkpoints go to a temporary directory that is removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
shmckpt_install_deps
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2 --target ckpt-demo ckpt-inspect shmckpt-worker

out=""
for a in "$@"; do
  case $a in --dir|--dir=*) out=given ;; esac
done
if [ -z "$out" ]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-demo.XXXXXX")
  trap 'rm -rf "$out"' EXIT
  set -- --dir "$out" "$@"
fi
./build/bin/ckpt-demo "$@"

# Show the newest complete checkpoint, as ckpt-inspect lists it.
dir=$out
prev=""
for a in "$@"; do
  case $a in --dir=*) dir=${a#--dir=} ;; esac
  [ "$prev" = "--dir" ] && dir=$a
  prev=$a
done
last=$(ls -d "$dir"/step_* 2>/dev/null | sort -t_ -k2 -n | tail -n 1 || true)
if [ -n "$last" ]; then
  echo
  echo "The last checkpoint, as ckpt-inspect lists it:"
  ./build/bin/ckpt-inspect list "$last"
fi
