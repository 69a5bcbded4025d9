#!/usr/bin/env bash
# Builds shmckpt and runs every test suite (CTest, two at a time).
#   scripts/test.sh                 release build in build/, all suites
#   scripts/test.sh --sanitizers    also AddressSanitizer+UBSan (build-asan/) and
#                                   ThreadSanitizer (build-tsan/) builds of all suites
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
shmckpt_install_deps

run_suite() {  # <build dir> [cmake args...]
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$dir" -j2
  ctest --test-dir "$dir" -j2 --output-on-failure --timeout 300
}

run_suite build
if [ "${1:-}" = "--sanitizers" ]; then
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_suite build-asan -DSHMCKPT_SANITIZE=address
  TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/test/tsan.supp" \
    run_suite build-tsan -DSHMCKPT_SANITIZE=thread
fi
