#!/bin/sh
# Installs the build into a scratch prefix, builds test/package against it with
# find_package(shmckpt), and runs the consumer.
# Usage: package_test.sh <build dir> <source dir> [address|thread]  (the build's sanitizer)
set -eu
build=$1 src=$2 sanitize=${3:-}
flags=
case $sanitize in
  address) flags="-fsanitize=address,undefined" ;;
  thread) flags="-fsanitize=thread" ;;
esac
scratch=$(mktemp -d "${TMPDIR:-/tmp}/shmckpt-package.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cmake --install "$build" --prefix "$scratch/prefix" >/dev/null
cmake -S "$src/test/package" -B "$scratch/build" -G Ninja -DCMAKE_PREFIX_PATH="$scratch/prefix" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" >/dev/null
cmake --build "$scratch/build" >/dev/null
LD_LIBRARY_PATH="$scratch/prefix/lib:$scratch/prefix/lib64:${LD_LIBRARY_PATH:-}" \
  "$scratch/build/consumer" "$scratch/ckpt"
