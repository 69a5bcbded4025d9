#!/bin/sh
# demo_test.sh — end-to-end checks of ckpt-demo, registered with CTest in test/CMakeLists.txt.
#
# Usage: demo_test.sh <path to ckpt-demo> <mode>
#   verifies      a tiny run exits 0, leaves DIR/step_<last>, and prints the verification line
#   child-killed  with --inject-child-kill the run exits non-zero with the library's
#                 "Child process terminated unexpectedly", and never claims to have verified
# Each run works in its own mktemp directory, so `ctest -j` is safe.
set -u

demo=${1:?usage: demo_test.sh <ckpt-demo> <verifies|child-killed>}
mode=${2:?usage: demo_test.sh <ckpt-demo> <verifies|child-killed>}
work=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-demo-test.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT

fail() {
  echo "FAIL ($mode): $*" >&2
  exit 1
}

# Tiny settings: 40 steps of a narrow model, a checkpoint every 10 steps, a 2 MiB state dict.
run_demo() {
  "$demo" --dir "$work/ckpt" --steps 40 --every 10 --mib 2 --hidden 32 --batch 64 "$@" \
    >"$work/out" 2>"$work/err"
}

case $mode in
  verifies)
    run_demo
    rc=$?
    cat "$work/out" "$work/err"
    [ "$rc" -eq 0 ] || fail "ckpt-demo exited with status $rc, expected 0"
    grep -q '^verified: step_40 reloads identical to the saved state' "$work/out" ||
      fail "no 'verified: step_40 ...' line in the output"
    [ "$(tail -n 1 "$work/out" | cut -c1-9)" = "verified:" ] ||
      fail "the verification line is not the last line of the output"
    [ "$(grep -c '^checkpoint step_' "$work/out")" -eq 4 ] ||
      fail "expected one line for each of the 4 checkpoints"
    [ -f "$work/ckpt/step_40/checkpoint_0.safetensors" ] ||
      fail "missing $work/ckpt/step_40/checkpoint_0.safetensors"
    ;;
  child-killed)
    # The kill at step 20 is followed by saves at 30 and 40, so the failure surfaces even if the
    # step-20 write had already become durable before the signal landed.
    run_demo --inject-child-kill 20
    rc=$?
    cat "$work/out" "$work/err"
    [ "$rc" -ne 0 ] || fail "ckpt-demo exited with status 0 after its checkpoint child was killed"
    grep -q '^ckpt-demo: .*Child process terminated unexpectedly' "$work/err" ||
      fail "stderr lacks 'ckpt-demo: ... Child process terminated unexpectedly'"
    if grep -q '^verified:' "$work/out"; then fail "claimed to verify after the child died"; fi
    ;;
  *)
    fail "unknown mode '$mode'"
    ;;
esac
echo "PASS ($mode)"
