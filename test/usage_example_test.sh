#!/bin/sh
# Runs the docs/usage.md example twice in one directory: the first run trains and checkpoints,
# the second resumes from the latest complete checkpoint.
set -eu
example=$1
root=$(mktemp -d "${TMPDIR:-/tmp}/shmckpt-usage.XXXXXX")
trap 'rm -rf "$root"' EXIT
first=$("$example" "$root")
echo "$first"
echo "$first" | grep -q "trained to step 200, weight\[0\] = 3.000"
[ -f "$root/step_200/checkpoint.json" ] || { echo "no manifest in step_200"; exit 1; }
[ ! -e "$root/step_100" ] || { echo "keep_last(2) left step_100"; exit 1; }
rm -rf "$root/step_200"
second=$("$example" "$root")
echo "$second"
echo "$second" | grep -q "resumed from $root/step_150 at step 150"
echo "$second" | grep -q "trained to step 200"
