#!/bin/sh
# Installs the build into a scratch prefix, builds test/package against it with
# find_package(shmckpt), and runs the consumer. Usage: package_test.sh <build dir> <source dir>
set -eu
build=$1 src=$2
scratch=$(mktemp -d "${TMPDIR:-/tmp}/shmckpt-package.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cmake --install "$build" --prefix "$scratch/prefix" >/dev/null
cmake -S "$src/test/package" -B "$scratch/build" -G Ninja -DCMAKE_PREFIX_PATH="$scratch/prefix" \
  -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$scratch/build" >/dev/null
LD_LIBRARY_PATH="$scratch/prefix/lib:$scratch/prefix/lib64:${LD_LIBRARY_PATH:-}" \
  "$scratch/build/consumer" "$scratch/ckpt"
