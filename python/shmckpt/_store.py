"""Committing through torch.distributed's store (barrier= of the checkpointers).

The commit algorithm is the library's (shmckpt/commit_store.hpp) and runs on a C++ thread that
never takes the GIL. Its store calls reach Python through a `_core.StoreBridge`: a `_StoreServer`
thread of this package takes each request, runs it against the torch store, and answers.

torch 1.13's TCPStore is used through set, compare_set and delete_key only. A key's presence is
probed without blocking by `compare_set(key, <absent marker>, ...)`, which returns the marker for
a missing key and the value otherwise, and a wait is a poll with backoff (1 ms up to 20 ms): a
`wait(keys, timeout)` that times out leaves the waiter registered at the server, whose wake-up
later arrives as the answer to another request on that connection.
"""

import os
import threading
import time

from . import _core
from ._errors import InvalidArgumentError

_ABSENT = b"\x00shmckpt:absent\x00"
_ABSENT_SWAP = b"\x00shmckpt:absent-swap\x00"
_POLL_FIRST = 0.001
_POLL_MAX = 0.02


def _torch_distributed():
    try:
        import torch.distributed as dist
    except ImportError:  # torch without distributed support
        return None
    return dist if dist.is_available() else None


def default_rank():
    """(rank, world_size) of the default process group when torch.distributed is initialised."""
    dist = _torch_distributed()
    if dist is not None and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def resolve(barrier):
    """The torch.distributed.Store to commit through (under our prefix), or None for the file
    barrier. `barrier`: None (the default store when torch.distributed is initialised, else the
    file barrier), "file", "store" (the default store, required), or a Store."""
    if barrier == "file":
        return None
    dist = _torch_distributed()
    if barrier is None or barrier == "store":
        if dist is not None and dist.is_initialized():
            store = dist.distributed_c10d._get_default_store()
        elif barrier == "store":
            raise InvalidArgumentError(
                "barrier='store' needs torch.distributed initialised "
                "(torch.distributed.init_process_group) or a store: barrier=<a "
                "torch.distributed.Store>; use barrier='file' for the filesystem barrier")
        else:
            return None
    elif isinstance(barrier, str):
        raise InvalidArgumentError(f"barrier={barrier!r} is not 'file', 'store', None or a "
                                   "torch.distributed.Store")
    else:
        store = barrier
        missing = [m for m in ("set", "get") if not callable(getattr(store, m, None))]
        if missing:
            raise InvalidArgumentError(f"barrier={barrier!r} is not a torch.distributed.Store "
                                       f"(it lacks {', '.join(missing)})")
    if dist is None:
        return store
    # A restarted job (torchrun --max-restarts) may keep its store: never meet the keys of an
    # earlier attempt.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"shmckpt/{attempt}/", store)


class StoreServer:
    """Serves a StoreBridge's requests against `store` on a daemon thread, until close()."""

    def __init__(self, store, name):
        self.bridge = _core.StoreBridge()
        self._store = store
        self._probe = self._probe_compare_set if callable(
            getattr(store, "compare_set", None)) else self._probe_wait
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        bridge = self.bridge
        while True:
            req = bridge.next(0.2)
            if req is None:
                if bridge.closed:
                    return
                continue
            rid, op, key, value, timeout = req
            try:
                if op == "set":
                    self._store.set(key, value)
                    bridge.answer(rid, None)
                elif op == "get":
                    bridge.answer(rid, self._get(key, timeout))
                else:
                    try:
                        self._store.delete_key(key)
                    except Exception:  # noqa: BLE001 - best effort (not every store deletes)
                        pass
                    bridge.answer(rid, None)
            except Exception as e:  # noqa: BLE001 - handed to the commit as its error
                bridge.fail(rid, f"{type(e).__name__}: {e}")

    def _probe_compare_set(self, key):
        v = self._store.compare_set(key, _ABSENT, _ABSENT_SWAP)
        return None if v == _ABSENT else bytes(v)

    def _probe_wait(self, key):
        import datetime
        try:
            self._store.wait([key], datetime.timedelta(milliseconds=1))
        except Exception:  # noqa: BLE001 - absent (a timeout)
            return None
        return bytes(self._store.get(key))

    def _get(self, key, timeout):
        end = time.monotonic() + timeout
        pause = _POLL_FIRST
        while True:
            v = self._probe(key)
            if v is not None:
                return v
            left = end - time.monotonic()
            if left <= 0 or self.bridge.closed:
                return None
            time.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX)

    def close(self, timeout=None):
        self.bridge.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
