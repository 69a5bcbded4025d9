#!/usr/bin/env bash
# Multi-rank commits across simulated hosts: network and mount namespaces on this machine, one
# sshfs mount of a shared export in each, ranks launched with torchrun's environment. Needs root
# and /dev/fuse; installs openssh-server, sshfs and fuse3 when missing (scripts/deps.sh).
#
#   test/multihost/run.sh                         # file barrier, 3 rounds, default caching
#   test/multihost/run.sh --measure --rounds 5    # file and store barriers, latency per round
#   test/multihost/run.sh --measure --cache default,off --barrier file
#   test/multihost/run.sh --kill                  # a rank dies before it arrives
#   test/multihost/run.sh --help                  # every option
#
# Uses the Python package of build/ (or of $SHMCKPT_PYTHON_DIR). Exits 77 when it cannot run here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ "$(id -u)" -eq 0 ]; then
  # shellcheck source=../../scripts/deps.sh
  . "$root/scripts/deps.sh"
  shmckpt_install_deps
fi
export SHMCKPT_PYTHON_DIR="${SHMCKPT_PYTHON_DIR:-$root/build/python}"
exec /usr/bin/python3 "$here/harness.py" "$@"
