#!/bin/sh
# Runs a command in a private mount namespace whose /dev/shm is a 64 MiB tmpfs, the Docker
# default. Exits 77 (reported by CTest as skipped) where mount namespaces are not permitted.
if ! unshare --mount --propagation private true 2>/dev/null; then
  echo "skipped: cannot create a mount namespace here (needs root or user namespaces)" >&2
  exit 77
fi
exec unshare --mount --propagation private \
  sh -c 'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"' sh "$@"
