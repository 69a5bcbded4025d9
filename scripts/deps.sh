#!/usr/bin/env bash
# Installs the Debian 12 packages shmckpt needs, skipping those already present. Sourced by the
# other scripts; safe to run on its own.
set -euo pipefail

SHMCKPT_PACKAGES=(
  g++ cmake ninja-build ccache pkg-config util-linux
  libboost1.81-dev libboost-test1.81-dev libboost-json1.81-dev libboost-program-options1.81-dev
  libxxhash-dev
  python3-dev pybind11-dev python3-torch python3-numpy python3-pytest
  iproute2 openssh-client openssh-server sshfs fuse3
)

shmckpt_install_deps() {
  local missing=()
  for p in "${SHMCKPT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "shmckpt: installing missing Debian packages: ${missing[*]}" >&2
  local sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then shmckpt_install_deps; fi
