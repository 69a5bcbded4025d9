#!/bin/sh
# demo_test.sh — end-to-end checks of ckpt-demo, registered with CTest in test/CMakeLists.txt.
#
# Usage: demo_test.sh <path to ckpt-demo> <mode>
#   verifies      a tiny run exits 0, leaves DIR/step_<last>, prints the verification line, and
#                 keeps only the newest 3 checkpoints (--keep's default)
#   child-killed  with --inject-child-kill the run survives: the next save starts a new
#                 checkpoint child, the last checkpoint verifies, and a checkpoint lost to the kill
#                 (if the kill landed before it was durable) is reported with the library's
#                 "Child process terminated unexpectedly"
#   resume        60 uninterrupted steps and 30 steps + --resume to 60 end in the same state: the
#                 same final loss line and the same fingerprint of the whole final state
#   multi-rank    --ranks 3 exits 0 and the last checkpoint has one file per rank and a manifest
#                 listing all 3
# Each run works in its own mktemp directory, so `ctest -j` is safe.
set -u

usage='usage: demo_test.sh <ckpt-demo> <verifies|child-killed|resume|multi-rank>'
demo=${1:?$usage}
mode=${2:?$usage}
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
    grep -Eq '^interference: (training ran at [0-9.]+x of its speed while a checkpoint was being written|not measured)' "$work/out" ||
      fail "no 'interference: ...' line in the summary"
    [ -f "$work/ckpt/step_40/checkpoint_0.safetensors" ] ||
      fail "missing $work/ckpt/step_40/checkpoint_0.safetensors"
    [ -f "$work/ckpt/step_40/checkpoint.json" ] || fail "step_40 has no manifest checkpoint.json"
    # --keep 3 (the default): step_10 was removed once step_40 was durable.
    kept=$(cd "$work/ckpt" && echo step_*)
    [ "$kept" = "step_20 step_30 step_40" ] ||
      fail "expected step_20 step_30 step_40 to be kept, found: $kept"
    ;;
  child-killed)
    run_demo --inject-child-kill 20
    rc=$?
    cat "$work/out" "$work/err"
    [ "$rc" -eq 0 ] || fail "ckpt-demo exited with status $rc after its checkpoint child was killed"
    grep -q '^ckpt-demo: fault injection: SIGKILL' "$work/err" || fail "no fault injection line"
    grep -q '^checkpoint child replaced 1 time(s)' "$work/out" ||
      fail "no 'checkpoint child replaced 1 time(s)' line: the child was not replaced"
    grep -q '^verified: step_40 reloads identical to the saved state' "$work/out" ||
      fail "the last checkpoint did not verify after the child was replaced"
    # The kill hits the write in flight: step_20's, or step_10's when that one is still being
    # written (a loaded machine, or training faster than the disk).
    if grep -q 'was lost' "$work/err"; then
      grep -Eq '^ckpt-demo: checkpoint step_(10|20) was lost, training goes on: Child process terminated unexpectedly' \
        "$work/err" || fail "a lost checkpoint was reported without the library's reason"
    fi
    ;;
  resume)
    # A batch of 1024 on the 16384 training samples ends an epoch every 16 steps. The sampler's
    # RNG has moved on at step 16, so the reshuffles at steps 32 and 48, after resuming at step
    # 30, match only if its state was restored; the weights, the Adam moments, the step, the
    # permutation and its cursor are tested along with it.
    resume_run() {  # resume_run <name of output> <steps> <more flags...>
      out=$1
      steps=$2
      shift 2
      "$demo" --steps "$steps" --every 10 --mib 2 --hidden 32 --batch 1024 "$@" >"$work/$out.out" 2>&1
      rc=$?
      cat "$work/$out.out"
      [ "$rc" -eq 0 ] || fail "ckpt-demo $* exited with status $rc, expected 0"
    }
    resume_run a 60 --dir "$work/a"
    resume_run b1 30 --dir "$work/b"
    resume_run b2 60 --dir "$work/b" --resume
    grep -q "^resumed from $work/b/step_30 .*: step 30, epoch 1" "$work/b2.out" ||
      fail "the resumed run did not report resuming from $work/b/step_30 at step 30"
    grep -q '^step  *0/60 ' "$work/b2.out" && fail "the resumed run started again from step 0"
    loss_a=$(grep '^step  *60/60 ' "$work/a.out")
    loss_b=$(grep '^step  *60/60 ' "$work/b2.out")
    [ -n "$loss_a" ] || fail "the uninterrupted run printed no line for step 60"
    [ "$loss_a" = "$loss_b" ] ||
      fail "final loss differs: uninterrupted '$loss_a', resumed '$loss_b'"
    final_a=$(grep '^final state: ' "$work/a.out")
    final_b=$(grep '^final state: ' "$work/b2.out")
    case $final_a in
      *"step 60, epoch 3, "*"fingerprint fnv1a64:"????????????????) ;;
      *) fail "unexpected final-state line of the uninterrupted run: '$final_a'" ;;
    esac
    [ "$final_a" = "$final_b" ] ||
      fail "final state differs: uninterrupted '$final_a', resumed '$final_b'"
    ;;
  multi-rank)
    "$demo" --dir "$work/ckpt" --ranks 3 --steps 20 --every 10 --mib 1 --deadline 100 \
      >"$work/out" 2>"$work/err"
    rc=$?
    cat "$work/out" "$work/err"
    [ "$rc" -eq 0 ] || fail "ckpt-demo --ranks 3 exited with status $rc, expected 0"
    for r in 0 1 2; do
      grep -q "^rank $r: exit status 0; final state: step 20," "$work/out" ||
        fail "no successful result line for rank $r"
      grep -q "^\[rank $r\] verified: step_20 reloads identical" "$work/out" ||
        fail "rank $r did not verify step_20"
      [ -f "$work/ckpt/step_20/checkpoint_$r.safetensors" ] ||
        fail "missing $work/ckpt/step_20/checkpoint_$r.safetensors"
    done
    manifest=$work/ckpt/step_20/checkpoint.json
    [ -f "$manifest" ] || fail "missing $manifest"
    grep -q '"world_size": *3' "$manifest" || fail "$manifest does not record world_size 3"
    [ "$(grep -o '"file": *"checkpoint_[0-2].safetensors"' "$manifest" | sort -u | wc -l)" -eq 3 ] ||
      fail "$manifest does not list checkpoint_0..2.safetensors"
    grep -q '^ckpt-demo: all 3 ranks succeeded' "$work/out" || fail "no 'all 3 ranks succeeded' line"
    ;;
  *)
    fail "unknown mode '$mode'"
    ;;
esac
echo "PASS ($mode)"
